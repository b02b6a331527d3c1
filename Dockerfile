# The remote worker: the `tower-detector` command on TensorFlow's GPU image, run by AWS Batch on the ECS GPU AMI
# (which brings the NVIDIA driver). Built from the repository root and pushed to the stack's ECR repository; see
# docs/aws.md. Each job's command is `remote worker predict|train|search ...`.
#
#   docker build -t tower-detector-worker .
#   docker run --rm tower-detector-worker --version
ARG TF_VERSION=2.21.0
FROM tensorflow/tensorflow:${TF_VERSION}-gpu

ENV PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    TF_CPP_MIN_LOG_LEVEL=2 \
    TOWER_DETECTOR_WORK=/tmp/tower-detector-work

WORKDIR /opt/tower-detector
COPY pyproject.toml constraints.txt README.md ./
COPY backend ./backend
# TensorFlow (with CUDA) comes from the base image: install the backend without the cpu/gpu extras, so pip keeps
# it; the pins (keras, numpy 1.26, boto3...) are the ones the tests ran with
RUN pip install -c constraints.txt . \
    && python -c "import tensorflow as tf, keras, tower_detector.remote; print(tf.__version__, keras.__version__)"
# ImageNet weights inside the image: a spot retry starts without downloading them again
RUN python -c "import keras; keras.applications.Xception(weights='imagenet', include_top=False)"

ENTRYPOINT ["tower-detector"]
CMD ["--help"]
