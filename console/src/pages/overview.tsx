// Overview: version, uptime, memory, and small charts of requests, errors, function runs and
// realtime streams, from the server's own metrics read every few seconds.
import { useEffect, useRef, useState } from "preact/hooks";
import uPlot from "uplot";
import "uplot/dist/uPlot.min.css";
import { api, call, eb, problem, type Problem } from "../api";
import { parse, rates, type Sample } from "../metrics";
import { ProblemLine, useLoad } from "../ui";

/** How often the metrics are read, and how many readings the charts keep. */
const EVERY_MS = 3000;
const KEPT = 60;

export function Overview() {
  const health = useLoad(() => eb.health(), []);
  const [samples, setSamples] = useState<Sample[]>([]);
  const [error, setError] = useState<Problem | null>(null);
  useEffect(() => {
    let stopped = false;
    const read = async () => {
      try {
        const text = await call<string>((headers) => api.GET("/metrics", { headers, parseAs: "text" }));
        if (stopped) return;
        setSamples((s) => [...s, parse(text, Date.now() / 1000)].slice(-KEPT));
        setError(null);
      } catch (e) {
        if (!stopped) setError(problem(e));
      }
    };
    void read();
    const timer = setInterval(read, EVERY_MS);
    return () => {
      stopped = true;
      clearInterval(timer);
    };
  }, []);
  const last = samples[samples.length - 1];
  const uptime = last?.startedAt ? duration(last.at - last.startedAt) : "—";
  const requests = rates(samples, (s) => s.requests);
  const errors = rates(samples, (s) => s.errors);
  const runs = rates(samples, (s) => s.invocations);
  const failures = rates(samples, (s) => s.failures);
  const times = samples.map((s) => s.at);
  return (
    <section aria-labelledby="overview-title">
      <h1 id="overview-title">Overview</h1>
      <ProblemLine problem={health.error ?? error} />
      <dl class="facts">
        <div>
          <dt>Version</dt>
          <dd data-testid="version">{health.value?.version ?? "—"}</dd>
        </div>
        <div>
          <dt>Status</dt>
          <dd>{health.value?.status ?? "—"}</dd>
        </div>
        <div>
          <dt>Storage</dt>
          <dd>{health.value ? `${health.value.storage.backend}, files ${health.value.files.backend}` : "—"}</dd>
        </div>
        <div>
          <dt>Uptime</dt>
          <dd>{uptime}</dd>
        </div>
        <div>
          <dt>Data</dt>
          <dd data-testid="data-size">{last?.storeBytes ? mebibytes(last.storeBytes) : "—"}</dd>
        </div>
        <div>
          <dt>Memory</dt>
          <dd>{last ? mebibytes(last.residentBytes) : "—"}</dd>
        </div>
        <div>
          <dt>Realtime streams</dt>
          <dd>{last?.realtime ?? "—"}</dd>
        </div>
      </dl>
      <div class="charts">
        <Chart title="Requests per second" times={times} series={[{ label: "requests", values: requests }, { label: "5xx", values: errors }]} />
        <Chart title="Function runs per second" times={times} series={[{ label: "runs", values: runs }, { label: "failed", values: failures }]} />
        <Chart title="Open realtime streams" times={times} series={[{ label: "streams", values: samples.map((s) => s.realtime) }]} />
      </div>
    </section>
  );
}

function mebibytes(bytes: number): string {
  return `${(bytes / 2 ** 20).toFixed(bytes < 10 * 2 ** 20 ? 1 : 0)} MiB`;
}

function duration(secs: number): string {
  const s = Math.max(0, Math.floor(secs));
  const d = Math.floor(s / 86400);
  const h = Math.floor((s % 86400) / 3600);
  const m = Math.floor((s % 3600) / 60);
  return d ? `${d}d ${h}h` : h ? `${h}h ${m}m` : `${m}m ${s % 60}s`;
}

const COLORS = ["#e8590c", "#c92a2a", "#1971c2"];

function Chart(props: { title: string; times: number[]; series: { label: string; values: number[] }[] }) {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlot | null>(null);
  const labels = props.series.map((s) => s.label).join(",");
  useEffect(() => {
    if (!box.current) return;
    const options: uPlot.Options = {
      width: Math.max(240, box.current.clientWidth),
      height: 140,
      legend: { show: true },
      scales: { x: { time: true } },
      axes: [{ stroke: "currentColor" }, { stroke: "currentColor", size: 48 }],
      series: [{}, ...props.series.map((s, i) => ({ label: s.label, stroke: COLORS[i % COLORS.length], width: 2 }))],
    };
    plot.current = new uPlot(options, [[], ...props.series.map(() => [])], box.current);
    const resize = () => box.current && plot.current?.setSize({ width: Math.max(240, box.current.clientWidth), height: 140 });
    addEventListener("resize", resize);
    return () => {
      removeEventListener("resize", resize);
      plot.current?.destroy();
      plot.current = null;
    };
  }, [labels]);
  useEffect(() => {
    plot.current?.setData([props.times, ...props.series.map((s) => s.values)]);
  });
  return (
    <figure class="chart">
      <figcaption>{props.title}</figcaption>
      <div ref={box} role="img" aria-label={props.title} />
    </figure>
  );
}
