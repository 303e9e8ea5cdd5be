#!/usr/bin/env bash
# Validates the scale recipes against their published schemas, beyond the YAML parse and local
# runs of xtask/tests/recipes.rs: the GitHub workflows against SchemaStore's workflow schema
# (check-jsonschema's vendored copy) and the Kubernetes manifests against the API schemas of
# Kubernetes 1.30 and 1.32 (kubernetes-validate). Installs both from PyPI into target/lint-venv.
set -euo pipefail
cd "$(dirname "$0")/.."
venv=target/lint-venv
if [ ! -x "$venv/bin/kubernetes-validate" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q check-jsonschema kubernetes-validate
fi
"$venv/bin/check-jsonschema" --builtin-schema vendor.github-workflows .github/workflows/*.yml
for v in 1.30.0 1.32.0; do
  "$venv/bin/kubernetes-validate" -k "$v" --strict scale/k8s/*.yaml
done
echo "validate-schemas: PASSED: every workflow and manifest matches its schema"
