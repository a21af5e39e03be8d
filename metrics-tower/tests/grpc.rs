//! gRPC: a real tonic server on loopback with the layer; unary calls are recorded with
//! their method path and grpc status.

use shmetrics_core::Store;
use shmetrics_tower::MetricsLayer;
use tonic_health::ServingStatus;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unary_grpc_calls_are_recorded_with_method_and_grpc_status() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::builder(dir.path())
        .application("grpc-test")
        .open()
        .unwrap();
    let (reporter, health) = tonic_health::server::health_reporter();
    reporter
        .set_service_status("shop.Orders", ServingStatus::Serving)
        .await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let layer = MetricsLayer::new(&store).unwrap();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .layer(layer)
            .add_service(health)
            .serve_with_incoming(tonic::transport::server::TcpIncoming::from(listener))
            .await
            .unwrap()
    });

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut client = HealthClient::new(channel.clone());
    for _ in 0..3 {
        let ok = client
            .check(HealthCheckRequest {
                service: "shop.Orders".into(),
            })
            .await
            .unwrap();
        assert_eq!(ok.into_inner().status, ServingStatus::Serving as i32);
    }
    let err = client
        .check(HealthCheckRequest {
            service: "shop.Unknown".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // An unknown method: UNIMPLEMENTED, and its path is not a route.
    let mut raw = tonic::client::Grpc::new(channel);
    raw.ready().await.unwrap();
    let path = http::uri::PathAndQuery::from_static("/grpc.health.v1.Health/NoSuchMethod");
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckRequest>::default();
    let err = raw
        .unary(tonic::Request::new(HealthCheckRequest::default()), path, codec)
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::Unimplemented);

    let snap = store.snapshot().unwrap();
    let c = |path: &str, status: &str| {
        snap.counter(
            "http_requests",
            &[("method", "POST"), ("path", path), ("status", status)],
        )
    };
    assert_eq!(
        c("/grpc.health.v1.Health/Check", "0"),
        Some(3),
        "{:#?}",
        snap.family("http_requests")
    );
    assert_eq!(c("/grpc.health.v1.Health/Check", "5"), Some(1));
    assert_eq!(c("unmatched", "12"), Some(1));
    assert_eq!(snap.family("http_requests").unwrap().series.len(), 3);
    let h = snap
        .histogram(
            "http_request_duration_seconds",
            &[("method", "POST"), ("path", "/grpc.health.v1.Health/Check")],
        )
        .unwrap();
    assert_eq!(h.count(), 4);
    assert_eq!(snap.gauge("http_requests_in_flight", &[]), Some(0.0));
}
