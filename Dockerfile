# The Cloud Build builder image, for people with a container daemon: a drop-in for the
# original cos-customizer image (same ENTRYPOINT and WORKDIR), so an existing
# cloudbuild.yaml only changes its step's `name:`. Build it with
# `scripts/build-builder-image.sh --dockerfile [TAG]`; without a daemon, the same script
# builds the same image from the same pieces (tests/builder_image.rs compares the two).

# The workspace's rust-version (Cargo.toml), on bookworm like the image's root file
# system, so the binary's C library is the one it runs with.
FROM rust:1.91.1-bookworm AS binaries

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

# The image's root file system: Debian 12's packages that the GCE path needs, made by the
# same script as the daemonless recipe (scripts/builder-rootfs.sh says what and why).
FROM debian:12.12-slim AS tree
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends mmdebstrap \
 && rm -rf /var/lib/apt/lists/*
COPY scripts/builder-rootfs.sh /usr/local/bin/
RUN builder-rootfs.sh /rootfs.tar \
 && mkdir /image \
 && tar -xpf /rootfs.tar -C /image --numeric-owner \
 && rm /rootfs.tar
# The program finds provisioner_amd64 next to itself (core/src/provisioner_bin.rs), so
# no -provisioner flag is needed.
COPY --from=binaries /out/cos_customizer /out/provisioner_amd64 /image/

FROM scratch
COPY --from=tree /image/ /
ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
# Cloud Build mounts the build's source at /workspace and runs steps there.
WORKDIR /workspace
ENTRYPOINT ["/cos_customizer"]
