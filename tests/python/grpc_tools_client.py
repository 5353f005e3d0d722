"""What a stranger's tools see on the data plane's gRPC listener, with Python's grpcio.

Lists the services through grpcio-reflection (which speaks the v1alpha reflection
protocol), resolves SubmitCommand's request type from the served descriptors, asks the
health service per service, and calls SubmitCommand without a token. Prints one JSON
object; the integration test `planes::ops` asserts on it.

Usage: grpc_tools_client.py HOST:PORT
"""

import json
import sys

import grpc
from google.protobuf import descriptor_pool, message_factory
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

COMMANDS = "aggregate.gateway.v1.CommandService"


def main(target: str) -> None:
    with grpc.insecure_channel(target) as channel:
        grpc.channel_ready_future(channel).result(timeout=10)
        database = ProtoReflectionDescriptorDatabase(channel)
        services = sorted(database.get_services())
        pool = descriptor_pool.DescriptorPool(database)
        submit = pool.FindServiceByName(COMMANDS).FindMethodByName("SubmitCommand")
        request_type = message_factory.GetMessageClass(submit.input_type)
        response_type = message_factory.GetMessageClass(submit.output_type)

        health = health_pb2_grpc.HealthStub(channel)
        statuses = {}
        for service in ["", COMMANDS]:
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            statuses[service] = health_pb2.HealthCheckResponse.ServingStatus.Name(answer.status)

        call = channel.unary_unary(
            f"/{COMMANDS}/SubmitCommand",
            request_serializer=request_type.SerializeToString,
            response_deserializer=response_type.FromString,
        )
        request = request_type(
            aggregate_type="order",
            aggregate_id="o-1",
            command_type="PlaceOrder",
            payload=b"{}",
            content_type="application/json",
        )
        try:
            call(request, timeout=5, metadata=[("x-correlation-id", "python-1")])
            refused = None
        except grpc.RpcError as err:
            metadata = dict(err.initial_metadata() or ()) | dict(err.trailing_metadata() or ())
            refused = {
                "code": err.code().name,
                "error_code": metadata.get("x-error-code"),
                "correlation_id": metadata.get("x-correlation-id"),
            }

    print(
        json.dumps(
            {
                "services": services,
                "submit_fields": sorted(f.name for f in submit.input_type.fields),
                "health": statuses,
                "unauthenticated_call": refused,
                "grpcio": grpc.__version__,
            }
        )
    )


if __name__ == "__main__":
    main(sys.argv[1])
