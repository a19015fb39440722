"""mmsearch: the code the mmsearch_training DAG runs, one module per stage."""

import os

# TensorFlow Transform's Keras layers are Keras 2 (tf_keras). Importing tensorflow_transform
# sets this too, but only helps if nothing imported tensorflow.keras earlier (MLflow's
# autolog does): set it before TensorFlow loads, in every process that uses this package.
os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")

__version__ = "0.1.0"
