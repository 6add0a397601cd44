#!/usr/bin/env bash
# Installs what building, testing and the lab need on a Debian machine:
# apt packages only when one is missing, then the Go modules.
set -euo pipefail
cd "$(dirname "$0")/.."

# etcd-server: the weftd binary test runs against Debian's etcd, a real peer of
# another version than the embedded one. systemd: systemd-analyze verifies
# deploy/systemd/weftd.service. skopeo: the image test checks `make image`'s
# archive with a real OCI tool.
pkgs=(iproute2 iptables nftables iperf3 iputils-ping procps kmod ethtool etcd-server systemd skopeo)
missing=()
for p in "${pkgs[@]}"; do
	if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed'; then
		missing+=("$p")
	fi
done
if ((${#missing[@]})); then
	echo "deps: installing ${missing[*]}"
	sudo=""
	if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
	$sudo apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

go mod download
