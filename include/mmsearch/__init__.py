"""mmsearch: the code the mmsearch_training DAG runs, one module per stage."""
__version__ = "0.1.0"
