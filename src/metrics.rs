//! Prometheus metrics. One registry per server, so several servers in one process (tests, an
//! embedding program) keep separate counts; Emberbase's own metrics are prefixed `emberbase_`,
//! the process's (CPU, memory, open files, threads) carry the standard `process_` names.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
};

pub(crate) struct Metrics {
    registry: Registry,
    /// The process collector, unprefixed: dashboards expect `process_resident_memory_bytes`.
    process: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub store_ops: IntCounterVec,
    pub file_bytes: IntCounterVec,
    pub function_invocations: IntCounterVec,
    pub webhook_deliveries: IntCounterVec,
    pub trace_spans: IntCounterVec,
    pub function_fuel: IntCounterVec,
    pub function_cpu: prometheus::CounterVec,
    pub function_fetch_bytes: IntCounterVec,
    pub function_duration: HistogramVec,
    pub commit_group_size: HistogramVec,
    pub flush_duration: HistogramVec,
    pub change_seq: IntGauge,
    pub change_feed_bytes: IntGauge,
    pub scan_examined: prometheus::IntCounter,
    pub query_held_peak: IntGauge,
    pub realtime_subscribers: IntGauge,
    /// Bytes the store takes, read when the metrics are.
    pub store_bytes: IntGauge,
    pub realtime_events: IntCounterVec,
    pub realtime_queued_bytes: IntGauge,
    pub backups: IntCounterVec,
    pub backup_last_success: IntGauge,
}

const LATENCY_BUCKETS: [f64; 14] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

impl Metrics {
    pub(crate) fn new() -> Result<Self, prometheus::Error> {
        let registry = Registry::new_custom(Some("emberbase".into()), None)?;
        let process = Registry::new();
        process.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        let http_requests = IntCounterVec::new(
            Opts::new(
                "http_requests_total",
                "HTTP requests by route pattern, method and status",
            ),
            &["route", "method", "status"],
        )?;
        let http_duration = HistogramVec::new(
            HistogramOpts::new("http_request_duration_seconds", "HTTP request latency")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["route"],
        )?;
        let function_invocations = IntCounterVec::new(
            Opts::new(
                "function_invocations_total",
                "Function invocations by function and status (ok, error, timeout)",
            ),
            &["function", "status"],
        )?;
        let function_fuel = IntCounterVec::new(
            Opts::new(
                "function_fuel_total",
                "Metering points spent by function runs, by function",
            ),
            &["function"],
        )?;
        let function_cpu = prometheus::CounterVec::new(
            Opts::new(
                "function_cpu_seconds_total",
                "CPU time of function runs, by function",
            ),
            &["function"],
        )?;
        let function_fetch_bytes = IntCounterVec::new(
            Opts::new(
                "function_fetch_bytes_total",
                "Bytes sent and received by functions' fetch requests, by function",
            ),
            &["function"],
        )?;
        let webhook_deliveries = IntCounterVec::new(
            Opts::new(
                "webhook_deliveries_total",
                "Webhook delivery attempts by outcome (delivered, failed, dead)",
            ),
            &["status"],
        )?;
        let function_duration = HistogramVec::new(
            HistogramOpts::new("function_duration_seconds", "Function run time")
                .buckets(LATENCY_BUCKETS.to_vec()),
            &["function"],
        )?;
        let file_bytes = IntCounterVec::new(
            Opts::new(
                "file_bytes_total",
                "File bytes uploaded (in) and served (out)",
            ),
            &["direction"],
        )?;
        let store_ops = IntCounterVec::new(
            Opts::new("store_ops_total", "Store operations by kind"),
            &["op"],
        )?;
        let commit_group_size = HistogramVec::new(
            HistogramOpts::new(
                "store_commit_group_size",
                "Transactions made durable by one flush (group commit)",
            )
            .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]),
            &[],
        )?;
        let flush_duration = HistogramVec::new(
            HistogramOpts::new(
                "store_flush_duration_seconds",
                "Time to flush one commit group",
            )
            .buckets(LATENCY_BUCKETS.to_vec()),
            &[],
        )?;
        let change_seq =
            IntGauge::new("store_change_seq", "Sequence of the last committed change")?;
        registry.register(Box::new(http_requests.clone()))?;
        registry.register(Box::new(http_duration.clone()))?;
        registry.register(Box::new(store_ops.clone()))?;
        registry.register(Box::new(file_bytes.clone()))?;
        registry.register(Box::new(function_invocations.clone()))?;
        registry.register(Box::new(webhook_deliveries.clone()))?;
        let trace_spans = IntCounterVec::new(
            Opts::new(
                "trace_spans_total",
                "Trace spans sent to the OTLP collector (exported) or lost (dropped: queue full, export failed)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(trace_spans.clone()))?;
        registry.register(Box::new(function_fuel.clone()))?;
        registry.register(Box::new(function_cpu.clone()))?;
        registry.register(Box::new(function_fetch_bytes.clone()))?;
        registry.register(Box::new(function_duration.clone()))?;
        registry.register(Box::new(commit_group_size.clone()))?;
        registry.register(Box::new(flush_duration.clone()))?;
        let realtime_subscribers =
            IntGauge::new("realtime_subscribers", "Open realtime (SSE) streams")?;
        let store_bytes = IntGauge::new(
            "store_bytes",
            "Bytes the document store takes (its files, or its database)",
        )?;
        registry.register(Box::new(store_bytes.clone()))?;
        let realtime_events = IntCounterVec::new(
            Opts::new(
                "realtime_events_total",
                "Realtime events queued for a subscriber (sent), or refused because its queue was full (overflow)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(change_seq.clone()))?;
        let change_feed_bytes = IntGauge::new(
            "store_change_feed_bytes",
            "Encoded bytes of the recent changes held in memory for live consumers",
        )?;
        registry.register(Box::new(change_feed_bytes.clone()))?;
        let scan_examined = prometheus::IntCounter::new(
            "store_scan_examined_total",
            "Documents examined by query scans",
        )?;
        registry.register(Box::new(scan_examined.clone()))?;
        let query_held_peak = IntGauge::new(
            "store_query_held_peak",
            "The most matching documents one query has held in memory at once since start",
        )?;
        registry.register(Box::new(query_held_peak.clone()))?;
        registry.register(Box::new(realtime_subscribers.clone()))?;
        registry.register(Box::new(realtime_events.clone()))?;
        let realtime_queued_bytes = IntGauge::new(
            "realtime_queued_bytes",
            "Bytes of realtime events queued for subscribers and not yet taken by their streams",
        )?;
        registry.register(Box::new(realtime_queued_bytes.clone()))?;
        let backups = IntCounterVec::new(
            Opts::new(
                "backups_total",
                "Backups this node finished, by outcome (ready, failed)",
            ),
            &["outcome"],
        )?;
        registry.register(Box::new(backups.clone()))?;
        let backup_last_success = IntGauge::new(
            "backup_last_success_timestamp_seconds",
            "When this node last finished a backup, in Unix seconds (0: not since it started)",
        )?;
        registry.register(Box::new(backup_last_success.clone()))?;
        Ok(Metrics {
            registry,
            process,
            http_requests,
            http_duration,
            store_ops,
            file_bytes,
            function_invocations,
            webhook_deliveries,
            trace_spans,
            function_fuel,
            function_cpu,
            function_fetch_bytes,
            function_duration,
            commit_group_size,
            flush_duration,
            change_seq,
            change_feed_bytes,
            scan_examined,
            query_held_peak,
            realtime_subscribers,
            store_bytes,
            realtime_events,
            realtime_queued_bytes,
            backups,
            backup_last_success,
        })
    }

    /// The Prometheus text exposition of every metric.
    pub(crate) fn render(&self) -> String {
        let mut out = Vec::new();
        // Encoding into a Vec cannot fail for the text format.
        let mut families = self.registry.gather();
        families.extend(self.process.gather());
        let _ = TextEncoder::new().encode(&families, &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}
