#!/usr/bin/env bash
# Terraform's own checks of infra/, offline: fmt, init (from a local provider mirror), validate on the root,
# every module and every example, and `terraform test` (a mocked AWS provider asserting on the plan).
# The mirror: TF_PLUGIN_DIR, else the directory holding an installed terraform-provider-aws; with neither, a
# normal init (a machine that reaches the registry). Without terraform at all, it says so and skips.
set -euo pipefail
cd "$(dirname "$0")/../infra"

if ! command -v terraform >/dev/null 2>&1; then
  echo "check-terraform: SKIPPED: terraform is not installed (fmt, validate and terraform test did not run)"
  exit 0
fi

plugin_dir="${TF_PLUGIN_DIR:-}"
if [ -z "$plugin_dir" ]; then
  # .../<plugin dir>/registry.terraform.io/hashicorp/aws/<version>/<os_arch>/terraform-provider-aws_v*
  binary=$(find /opt /usr/local/share /usr/share "$HOME/.terraform.d" -name 'terraform-provider-aws_v*' \
             -path '*registry.terraform.io/hashicorp/aws/*' 2>/dev/null | sort | tail -n 1 || true)
  [ -n "$binary" ] && plugin_dir=$(dirname "$(dirname "$(dirname "$(dirname "$(dirname "$(dirname "$binary")")")")")")
fi
init_flags=(-backend=false -input=false -no-color)
if [ -n "$plugin_dir" ]; then
  echo "check-terraform: providers from $plugin_dir"
  init_flags+=("-plugin-dir=$plugin_dir")
else
  echo "check-terraform: no local provider mirror found: init from the registry"
fi
# The machine's CLI configuration may name a file that does not exist; none is needed here.
export TF_CLI_CONFIG_FILE="${TF_CLI_CONFIG_FILE_OVERRIDE:-/dev/null}"
export TF_IN_AUTOMATION=1

terraform fmt -check -recursive -diff .
for dir in . modules/deployment examples/demo-backend; do
  (cd "$dir" && terraform init "${init_flags[@]}" >/dev/null && terraform validate -no-color)
done
terraform test -no-color
(cd modules/deployment && terraform test -no-color)
echo "check-terraform: fmt, validate (root, modules/deployment, examples/demo-backend) and terraform test (root, modules/deployment) passed"
