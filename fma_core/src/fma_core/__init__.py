"""FMA core: weights format, aggregation algorithms, round policies and the round engine.

Imports nothing but numpy and safetensors, so it runs inside a Django service, a Celery worker,
a Lambda function or a plain training script alike.
"""

__version__ = "0.4.0"
