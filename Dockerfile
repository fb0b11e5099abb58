# Production-shaped image: the official Airflow image plus this project's pinned requirements.
FROM apache/airflow:3.3.2-python3.11
COPY requirements.txt /requirements.txt
# Airflow's own packages are already in the image at the same pinned versions.
RUN pip install --no-cache-dir -r /requirements.txt
ENV PYTHONPATH=/opt/airflow/include
