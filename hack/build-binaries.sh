#!/usr/bin/env bash
# Builds the binaries of the test control plane (and the packaging tools) from Go modules, at the
# versions pinned in hack/versions.env, into a versioned cache outside the repository:
#   ${FTO_CACHE:-~/.cache/finetune-operator}/bin/<name>-<version>/<binary>
# A binary already in the cache is not rebuilt, so a second run takes a second.
#
# usage: hack/build-binaries.sh [kubernetes|etcd|kwok|minio|helm|kubeconform|kueue ...]   (default: all)
# Prints one line per component: <component>=<directory holding its binaries>.
set -euo pipefail
shopt -s inherit_errexit

here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.env
source "$here/versions.env"
cache=${FTO_CACHE:-$HOME/.cache/finetune-operator}
export GOFLAGS=-mod=mod GOTOOLCHAIN=${GOTOOLCHAIN:-local} CGO_ENABLED=0
log() { echo "build-binaries: $*" >&2; }

# A fresh wrapper module per build: `go install pkg@version` refuses modules whose go.mod has
# replace directives (kubernetes' ./staging, etcd's ../api), and replaces only count in the main
# module, so the wrapper carries them.
new_wrapper() {
  local dir
  dir=$(mktemp -d "$cache/work.XXXXXX")
  (cd "$dir" && go mod init fto.local/wrapper >/dev/null 2>&1)
  echo "$dir"
}

finish() {  # finish <tmpdir> <outdir>: publish atomically so a half-built cache is never used
  local tmp=$1 out=$2
  chmod 755 "$tmp"
  rm -rf "$out.partial" && mv "$tmp" "$out.partial" && rm -rf "$out" && mv "$out.partial" "$out"
}

# Turns every `k8s.io/x => ./staging/src/k8s.io/x` of the release's go.mod into
# `k8s.io/x => k8s.io/x v0.<minor>.<patch>`: the staging tags carry the same code as the release.
staging_replaces() {
  local gomod=$1 staging_version=$2
  sed -n '/^replace (/,/^)/p' "$gomod" |
    awk -v v="$staging_version" '$2 == "=>" && $3 ~ /^\.\/staging\// {print "-replace=" $1 "=" $1 "@" v}'
}

build_kubernetes() {
  local v=$KUBERNETES_VERSION out=$cache/bin/kubernetes-$KUBERNETES_VERSION
  [[ -x $out/kube-apiserver && -x $out/kubectl ]] && { echo "$out"; return; }
  local minor patch staging_version gomod wrapper tmp
  IFS=. read -r _ minor patch <<<"${v#v}"
  staging_version=v0.$minor.$patch
  log "kubernetes $v (first build takes a while: tens of minutes on 2 cores)"
  gomod=$(go mod download -json "k8s.io/kubernetes@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  wrapper=$(new_wrapper)
  (
    cd "$wrapper"
    # shellcheck disable=SC2046
    go mod edit $(staging_replaces "$gomod" "$staging_version") -require="k8s.io/kubernetes@$v"
    grep '^godebug' "$gomod" >>go.mod || true
    go mod edit -go="$(sed -n 's/^go \([0-9.]*\)$/\1/p' "$gomod")"
    local pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
                k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
    go get "${pkgs[@]/%/@$v}" >/dev/null 2>&1 || go get "${pkgs[@]}"
    local date ldflags="-s -w"
    date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
      ldflags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
      ldflags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
    done
    mkdir -p out
    go build -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ldflags" -o out/ "${pkgs[@]}"
  )
  tmp=$wrapper/out
  finish "$tmp" "$out"
  rm -rf "$wrapper"
  echo "$out"
}

build_etcd() {
  local v=$ETCD_VERSION out=$cache/bin/etcd-$ETCD_VERSION
  [[ -x $out/etcd ]] && { echo "$out"; return; }
  log "etcd $v"
  local wrapper gomod
  gomod=$(go mod download -json "go.etcd.io/etcd/server/v3@$v" | sed -n 's/.*"GoMod": "\(.*\)".*/\1/p')
  wrapper=$(new_wrapper)
  (
    cd "$wrapper"
    # etcd's release go.mod replaces its sibling modules with ../api, ../client/...; the same
    # release tag of each sibling is the same code.
    local reps
    reps=$(sed -n '/^replace (/,/^)/p' "$gomod" |
      awk -v v="$v" '$2 == "=>" && $3 ~ /^\.\.\// {print "-replace=" $1 "=" $1 "@" v}')
    # shellcheck disable=SC2086
    go mod edit $reps -require="go.etcd.io/etcd/server/v3@$v"
    go get "go.etcd.io/etcd/server/v3@$v" >/dev/null
    mkdir -p out
    go build -trimpath -ldflags "-s -w -X go.etcd.io/etcd/api/v3/version.GitSHA=$v" -o out/etcd go.etcd.io/etcd/server/v3
  )
  finish "$wrapper/out" "$out"
  rm -rf "$wrapper"
  echo "$out"
}

# Modules without replace directives install directly.
go_install() {  # go_install <name> <version> <package> <binary>
  local name=$1 v=$2 pkg=$3 binary=$4 out=$cache/bin/$1-$2
  [[ -x $out/$binary ]] && { echo "$out"; return; }
  log "$name $v"
  local tmp
  tmp=$(mktemp -d "$cache/work.XXXXXX")
  GOBIN=$tmp go install -trimpath -ldflags "-s -w ${GO_LDFLAGS:-}" "$pkg@$v"
  finish "$tmp" "$out"
  echo "$out"
}

build_kwok() { go_install kwok "$KWOK_VERSION" sigs.k8s.io/kwok/cmd/kwok kwok; }
build_kubeconform() { go_install kubeconform "$KUBECONFORM_VERSION" github.com/yannh/kubeconform/cmd/kubeconform kubeconform; }
# helm's default Kubernetes version comes from ldflags (without them it assumes v1.20, and charts that
# need a newer one fail `helm template`): the same version as the control plane.
build_helm() {
  local minor
  IFS=. read -r _ minor _ <<<"${KUBERNETES_VERSION#v}"
  GO_LDFLAGS="-X helm.sh/helm/v3/pkg/chartutil.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/chartutil.k8sVersionMinor=$minor
    -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMajor=1 -X helm.sh/helm/v3/pkg/lint/rules.k8sVersionMinor=$minor" \
    go_install helm "$HELM_VERSION" helm.sh/helm/v3/cmd/helm helm
}
build_minio() { go_install minio "$MINIO_VERSION" github.com/minio/minio minio; }
# Kueue's controller manager, and next to it the CRDs of the same release (from the module source, so
# the binary and the schema it expects can never drift apart).
build_kueue() {
  local v=$KUEUE_VERSION out=$cache/bin/kueue-$KUEUE_VERSION
  [[ -x $out/kueue && -f $out/crds/kueue.x-k8s.io_workloads.yaml ]] && { echo "$out"; return; }
  log "kueue $v"
  local tmp src
  tmp=$(mktemp -d "$cache/work.XXXXXX")
  GOBIN=$tmp go install -trimpath -ldflags "-s -w -X sigs.k8s.io/kueue/pkg/version.GitVersion=$v" "sigs.k8s.io/kueue/cmd/kueue@$v"
  src=$(go mod download -json "sigs.k8s.io/kueue@$v" | sed -n 's/.*"Dir": "\(.*\)".*/\1/p')
  mkdir "$tmp/crds"
  cp "$src"/config/components/crd/bases/*.yaml "$tmp/crds/"
  chmod 644 "$tmp"/crds/*.yaml
  finish "$tmp" "$out"
  echo "$out"
}

mkdir -p "$cache/bin"
components=("$@")
[[ ${#components[@]} -gt 0 ]] || components=(kubernetes etcd kwok minio helm kubeconform kueue)
for c in "${components[@]}"; do
  dir=$("build_$c")
  echo "$c=$dir"
done
