"""The bad-input corpus: Telco-shaped CSV files, each broken in one documented way (see corpus.py)."""
