"""fma-aggregator: runs FMA's rounds, exactly once, wherever the deployment wants them run.

Three runners drive the same ``fma_core.rounds.RoundEngine`` over fma-django's metadata store:
an in-process background worker (the embedded default), Celery workers with beat
(``celery -A fma_aggregator worker``; the app is ``fma_aggregator.celery``), and one AWS Lambda
handler (``fma_aggregator.lambda_handler.handler``). Installing this package as a Django app
(``fma_aggregator``) connects the API's "round may be ready" signal to the configured runner.
"""
