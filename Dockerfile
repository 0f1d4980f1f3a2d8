# One image for every role: `docker run IMAGE broker|actor|learner|status ...`.
FROM python:3.11-slim
WORKDIR /opt/qrl
# The CPU wheel of torch (pinned like the Makefile's install); use a CUDA base and wheel for GPU learners.
RUN pip install --no-cache-dir torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu
COPY pyproject.toml README.md ./
COPY qrl qrl
COPY brokers brokers
COPY algorithms algorithms
COPY configs configs
RUN pip install --no-cache-dir .
ENTRYPOINT ["qrl"]
