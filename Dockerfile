# One image for every role: `docker run IMAGE broker|actor|learner|inference|status ...`.
#
# Built by `make image` (deploy/docker/build.sh), which needs no registry: the base is a Debian
# bookworm made with debootstrap and `docker import`ed as qrl-base:bookworm, and every Python
# package comes as a wheel prepared on the host in build/wheels (qrl itself, its dependencies and
# the torch wheel: the CPU one by default, a CUDA one with `make image TORCH_INDEX=...`). Nothing is
# compiled here, so the runtime image has no compilers, no pip cache and no apt lists.
ARG BASE=qrl-base:bookworm

FROM ${BASE} AS runtime
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb /var/cache/apt/*.bin

FROM runtime AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*
COPY build/wheels /wheels
# torch's C++ headers and test data serve C++ extensions and torch's own tests, neither of which
# runs here (145 MB of the CPU wheel).
RUN python3 -m venv /opt/qrl/venv \
    && /opt/qrl/venv/bin/pip install --no-cache-dir --no-index --find-links /wheels qrl \
    && /opt/qrl/venv/bin/pip uninstall --yes --quiet pip setuptools \
    && rm -rf /opt/qrl/venv/lib/python3.11/site-packages/torch/include \
              /opt/qrl/venv/lib/python3.11/site-packages/torch/test

FROM runtime
COPY --from=build /opt/qrl/venv /opt/qrl/venv
COPY configs /opt/qrl/configs
ENV PATH=/opt/qrl/venv/bin:$PATH PYTHONDONTWRITEBYTECODE=1
WORKDIR /opt/qrl
ENTRYPOINT ["qrl"]
