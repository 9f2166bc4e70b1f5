# The generated modules (cluster_pb2, cluster_pb2_grpc, types_pb2, ...) land here at build time.
