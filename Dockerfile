# The raypipe image: Ray's own image with PyTorch and raypipe installed, for KubeRay clusters
# (deploy/kuberay/) and for `ray up` with docker.  Every pod of a cluster must run the same image.
#
#   docker build -t ghcr.io/raypipe/raypipe:0.1.0-ray2.60.0 .                                   # CPU
#   docker build --build-arg VARIANT=gpu -t ghcr.io/raypipe/raypipe:0.1.0-ray2.60.0-gpu .      # CUDA
#
# VARIANT=cpu starts from rayproject/ray:<RAY_VERSION>-py311-cpu and installs PyTorch's CPU
# build from its CPU index (no multi-GB CUDA wheels); VARIANT=gpu starts from the CUDA image
# (-py311-gpu) and installs the CUDA build from TORCH_GPU_INDEX.  Ray is pinned to the base
# image's version, so installing raypipe never replaces it.  The image runs as Ray's non-root
# user `ray` (uid 1000, group users/100), as KubeRay expects.
ARG RAY_VERSION=2.60.0
ARG VARIANT=cpu
FROM rayproject/ray:${RAY_VERSION}-py311-${VARIANT}

ARG RAY_VERSION
ARG VARIANT
ARG TORCH_VERSION=2.13.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG TORCH_GPU_INDEX=https://download.pytorch.org/whl/cu128
# Extras of raypipe to install: examples (scikit-learn, for the shipped configs), mlflow, wandb.
ARG EXTRAS=examples

USER ray
WORKDIR /home/ray/raypipe
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1

# PyTorch first (the README's order), from the index of the variant.
RUN case "${VARIANT}" in \
        cpu) index="${TORCH_CPU_INDEX}" ;; \
        gpu) index="${TORCH_GPU_INDEX}" ;; \
        *) echo "VARIANT must be cpu or gpu, not ${VARIANT}" >&2; exit 1 ;; \
    esac \
    && python -m pip install --index-url "${index}" "torch==${TORCH_VERSION}"

COPY --chown=ray:users pyproject.toml README.md ./
COPY --chown=ray:users raypipe ./raypipe
RUN python -m pip install ".[${EXTRAS}]" "ray[data,train,tune,serve]==${RAY_VERSION}" "torch==${TORCH_VERSION}" \
    && python -c "import ray, raypipe; assert ray.__version__ == '${RAY_VERSION}', ray.__version__"

# The shipped pipeline files, so a RayJob can run `raypipe run configs/quickstart.yaml`.
COPY --chown=ray:users configs ./configs

USER ray
