"""Package hashpivot.v1 of the gRPC contract; the *_pb2* modules are generated (scripts/gen_protos.sh)."""
