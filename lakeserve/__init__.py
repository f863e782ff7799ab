"""lakeserve: batch-and-stream model inference on Kafka, Feast, MLflow, Delta Lake and Spark.

The top-level folders of the repository are installed as one namespace:
``scoring/`` is :mod:`lakeserve.scoring`, ``features/`` is :mod:`lakeserve.features`, and so on.
"""

__version__ = "0.1.0"
