"""The benchmark behind `make bench`: bench/run.py is the entry point and says what is where."""
