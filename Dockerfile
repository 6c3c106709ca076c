# The Cloud Build builder image: a drop-in for the original cos-customizer image (same
# ENTRYPOINT and WORKDIR), so an existing cloudbuild.yaml only changes its step's `name:`.
# Build it with scripts/build-builder-image.sh [TAG]; tests/builder_image.rs lints this file.

# The workspace's rust-version (Cargo.toml), on bookworm like the runtime stage so the
# host binary's glibc is the one it runs with.
FROM rust:1.91.1-bookworm AS build

# scripts/build-provisioner.sh links the provisioner against glibc's static libraries
# (libc6-dev) and proves it static with `file` and `ldd` (libc-bin). The rust image has
# them today; naming them keeps a change of base image from failing deep in the script.
# Versions are not pinned (DL3008): the archive drops old ones at each security update;
# the base image's tag pins the release.
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends file libc6-dev \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /src
# Only what Cargo reads: the workspace members, and tests/ since Cargo checks that the
# root package's declared [[test]] targets exist even for a release build of the binary.
COPY Cargo.toml Cargo.lock ./
COPY src/ src/
COPY tests/ tests/
COPY common/ common/
COPY core/ core/
COPY backends/ backends/
COPY provisioner/ provisioner/
COPY scripts/build-provisioner.sh scripts/

RUN cargo build --release --locked -p cos-customizer \
 && install -D -m 0755 target/release/cos-customizer /out/cos_customizer
# The provisioner runs inside the COS build VM, so it must be static: the script builds it
# so and checks it; it prints the binary's path on its last line (its log goes to stderr).
RUN prov="$(scripts/build-provisioner.sh)" \
 && install -D -m 0755 "$prov" /out/provisioner_amd64

# Not distroless: on the GCE path the program runs tools. Each goes through util-linux's
# setpriv (core/src/async_cmd.rs); tar and gzip pack the CIDATA and SCRATCH disks for
# import (backends/gce/src/raw_disk.rs); mkfs.ext4 (e2fsprogs) formats install-gpu's
# SCRATCH disk (core/src/scratch.rs). ca-certificates: rustls reads the system roots
# to reach the Google APIs. (The CIDATA file system itself is made in-process.)
FROM debian:12.12-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates e2fsprogs gzip tar util-linux \
 && rm -rf /var/lib/apt/lists/*

# The program finds provisioner_amd64 next to itself (core/src/provisioner_bin.rs), so
# no -provisioner flag is needed.
COPY --from=build /out/cos_customizer /cos_customizer
COPY --from=build /out/provisioner_amd64 /provisioner_amd64

# Cloud Build mounts the build's source at /workspace and runs steps there.
WORKDIR /workspace
ENTRYPOINT ["/cos_customizer"]
