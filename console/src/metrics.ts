// Reads the server's Prometheus text (GET /metrics) into the few numbers the overview charts.

export interface Sample {
  /** Seconds since the epoch, when it was read. */
  at: number;
  requests: number;
  errors: number;
  invocations: number;
  failures: number;
  realtime: number;
  startedAt: number;
  residentBytes: number;
  storeBytes: number;
}

/** `name{labels} value` lines → the sums the overview needs. */
export function parse(text: string, at: number): Sample {
  const sample: Sample = { at, requests: 0, errors: 0, invocations: 0, failures: 0, realtime: 0, startedAt: 0, residentBytes: 0, storeBytes: 0 };
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-z_:]+)(\{([^}]*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const [, name, , labels = "", raw] = match;
    const value = Number(raw);
    if (!Number.isFinite(value)) continue;
    const label = (key: string) => new RegExp(`${key}="([^"]*)"`).exec(labels)?.[1];
    switch (name) {
      case "emberbase_http_requests_total":
        sample.requests += value;
        if (label("status")?.startsWith("5")) sample.errors += value;
        break;
      case "emberbase_function_invocations_total":
        sample.invocations += value;
        if (label("status") !== "ok") sample.failures += value;
        break;
      case "emberbase_realtime_subscribers":
        sample.realtime = value;
        break;
      case "process_start_time_seconds":
        sample.startedAt = value;
        break;
      case "process_resident_memory_bytes":
        sample.residentBytes = value;
        break;
      case "emberbase_store_bytes":
        sample.storeBytes = value;
        break;
    }
  }
  return sample;
}

/** Per-second rates of a counter between consecutive samples. */
export function rates(samples: Sample[], pick: (s: Sample) => number): number[] {
  return samples.map((s, i) => {
    const before = samples[i - 1];
    if (!before || s.at <= before.at) return 0;
    return Math.max(0, (pick(s) - pick(before)) / (s.at - before.at));
  });
}
