# The MLflow tracking server of docker-compose.yml: the official image (same MLflow version as
# seglab's tests) plus the PostgreSQL driver and the S3 client it needs for this stack.
ARG MLFLOW_VERSION=3.17.2
FROM ghcr.io/mlflow/mlflow:v${MLFLOW_VERSION}
# SQLAlchemy 2.1 reads postgresql:// with psycopg 3.
RUN pip install --no-cache-dir "psycopg[binary]>=3.1" "boto3>=1.34"
