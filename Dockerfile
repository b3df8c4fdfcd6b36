# smoothcert: the gRPC certification service, for CPU and GPU nodes alike.
#
#   docker build -t smoothcert .
#   docker run -p 50051:50051 -p 9090:9090 smoothcert            # CPU
#   docker run --gpus all -p 50051:50051 -p 9090:9090 smoothcert  # GPU
#
# The builder runs the README's own set-up (scripts/setup.sh: libtorch 2.11.0
# from the torch==2.11.0 wheel, and with SMOOTHCERT_CUDA=1 the CUDA libraries
# that wheel was built against), then the same release build as `make build`.
# The runtime image holds the binary, those libraries at the paths its rpath
# names, and the default bundle; configuration comes from the environment
# (SMOOTHCERT__SECTION__KEY) or a file passed with --config.

FROM rust:1.95-bookworm AS builder
ENV SMOOTHCERT_CACHE=/opt/smoothcert \
    SMOOTHCERT_CUDA=1
WORKDIR /src
COPY . .
RUN bash scripts/setup.sh \
    && cargo build --release --locked \
    && rm -rf /opt/smoothcert/libtorch-2.11.0/include

FROM debian:bookworm-slim
# libtorch's RPATH finds the CUDA libraries at ../../nvidia from its lib folder,
# and the binary's rpath names the lib folder: both keep the builder's paths.
COPY --from=builder /opt/smoothcert/libtorch-2.11.0/lib /opt/smoothcert/libtorch-2.11.0/lib
COPY --from=builder /opt/smoothcert/nvidia /opt/smoothcert/nvidia
COPY --from=builder /src/target/release/smoothcert /usr/local/bin/smoothcert
# The dataset, for the pipeline's Jobs (deploy/pipeline); serving does not read it.
COPY --from=builder /usr/share/datasets/fashion-mnist /usr/share/datasets/fashion-mnist
COPY models/fashion-mnist-sigma0.25 /app/models/fashion-mnist-sigma0.25
COPY models/fashion-mnist-uniform-lambda1.0 /app/models/fashion-mnist-uniform-lambda1.0
COPY config/smoothcert.toml /app/config/smoothcert.toml
RUN useradd --system --uid 10001 --home-dir /app --shell /usr/sbin/nologin smoothcert
USER 10001
WORKDIR /app
# libgomp's threads sleep when idle instead of spinning on shared CPUs.
ENV OMP_WAIT_POLICY=PASSIVE \
    SMOOTHCERT__SERVER__GRPC_ADDR=0.0.0.0:50051 \
    SMOOTHCERT__SERVER__METRICS_ADDR=0.0.0.0:9090 \
    SMOOTHCERT__LOGGING__FORMAT=json
EXPOSE 50051 9090
ENTRYPOINT ["/usr/local/bin/smoothcert"]
CMD ["serve", "--config", "/app/config/smoothcert.toml"]
