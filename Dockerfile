# The `trainer` service of docker-compose.yml: seglab on TensorFlow's GPU image (CUDA and cuDNN
# included; the host needs the NVIDIA container toolkit). The TensorFlow version matches
# pyproject.toml's range, so pip keeps the image's GPU build.
FROM tensorflow/tensorflow:2.20.0-gpu

WORKDIR /opt/seglab
COPY pyproject.toml README.md ./
COPY seglab ./seglab
COPY conf ./conf
COPY experiments ./experiments
# A normal install, as a user's: the configs and presets are package data (conf/).
RUN pip install --no-cache-dir .

WORKDIR /runs
ENTRYPOINT ["python", "-m", "seglab"]
CMD ["data=shapes"]
