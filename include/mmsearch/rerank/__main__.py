from mmsearch.rerank.app import main

main()
