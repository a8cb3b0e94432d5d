"""The dataset: records to Parquet splits (assemble), the dataset card, publication on the Hub."""
