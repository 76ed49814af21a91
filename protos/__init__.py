"""The gRPC contract: protos/hashpivot/v1/*.proto and the Python code generated from them (scripts/gen_protos.sh)."""
