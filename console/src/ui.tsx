// Small pieces every page uses.
import type { ComponentChildren } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { problem, type Problem } from "./api";
import { follow, href } from "./router";

export function Link(props: { to: string; children: ComponentChildren; class?: string; current?: boolean }) {
  return (
    <a
      href={href(props.to)}
      class={props.class}
      aria-current={props.current ? "page" : undefined}
      onClick={(e) => follow(e, props.to)}
    >
      {props.children}
    </a>
  );
}

/** A failure as a message in an alert, with a caret under the column of a bad expression. */
export function ProblemLine(props: { problem: Problem | null; source?: string }) {
  const { problem: p, source } = props;
  if (!p) return null;
  return (
    <div class="problem" role="alert">
      <span>{p.message}</span>
      {p.column !== undefined && source !== undefined && (
        <pre class="caret" data-column={p.column}>
          {source}
          {"\n"}
          {" ".repeat(Math.max(0, p.column - 1))}^ column {p.column}
        </pre>
      )}
    </div>
  );
}

/** Loads with `load` when `deps` change; `reload` runs it again. */
export function useLoad<T>(load: () => Promise<T>, deps: unknown[]) {
  const [value, setValue] = useState<T | null>(null);
  const [error, setError] = useState<Problem | null>(null);
  const [loading, setLoading] = useState(true);
  const latest = useRef(0);
  const reload = useCallback(() => {
    const mine = ++latest.current;
    setLoading(true);
    load().then(
      (v) => {
        if (mine !== latest.current) return;
        setValue(v);
        setError(null);
        setLoading(false);
      },
      (e) => {
        if (mine !== latest.current) return;
        setError(problem(e));
        setLoading(false);
      },
    );
  }, deps);
  useEffect(reload, [reload]);
  return { value, setValue, error, loading, reload };
}

/** A page's actions: `act(what, run)` runs `run`, then shows `what` as `notice` and calls
 * `after`; a failure shows as `error` instead. `clear` forgets both. */
export function useAction(after: () => void) {
  const [error, setError] = useState<Problem | null>(null);
  const [notice, setNotice] = useState("");
  const clear = () => {
    setError(null);
    setNotice("");
  };
  const act = async (what: string, run: () => Promise<unknown>) => {
    clear();
    try {
      await run();
      setNotice(what);
      after();
    } catch (e) {
      setError(problem(e));
    }
  };
  return { error, notice, act, clear };
}

/** Runs `f` when `value` has stayed the same for `ms`. */
export function useDebounced<T>(value: T, ms: number, f: (value: T) => void) {
  const latest = useRef(f);
  latest.current = f;
  useEffect(() => {
    const timer = setTimeout(() => latest.current(value), ms);
    return () => clearTimeout(timer);
  }, [value, ms]);
}

/** A labelled control; the hint is outside the label, so that it is not part of its name. */
export function Field(props: { label: string; children: ComponentChildren; hint?: string }) {
  return (
    <div class="field">
      <label>
        <span class="label">{props.label}</span>
        {props.children}
      </label>
      {props.hint && <span class="hint">{props.hint}</span>}
    </div>
  );
}

export function Empty(props: { children: ComponentChildren }) {
  return <p class="empty">{props.children}</p>;
}

/** A table with a header row, scrolling sideways on narrow screens. */
export function Grid(props: { columns: string[]; children: ComponentChildren }) {
  return (
    <div class="scroll">
      <table class="grid">
        <thead>
          <tr>
            {props.columns.map((c) => (
              <th key={c} scope="col">
                {c}
              </th>
            ))}
          </tr>
        </thead>
        <tbody>{props.children}</tbody>
      </table>
    </div>
  );
}

/** The cursors of the pages up to the one shown (the first page's is null). */
export type Cursors = (string | null)[];

/** Previous and Next over cursor pages; `next` is the shown page's `next_cursor`. */
export function Pager(props: { cursors: Cursors; setCursors: (change: (cursors: Cursors) => Cursors) => void; next: string | null | undefined }) {
  const { cursors, setCursors, next } = props;
  return (
    <nav class="pager" aria-label="Pages">
      <button type="button" disabled={cursors.length === 1} onClick={() => setCursors((c) => c.slice(0, -1))}>
        Previous
      </button>
      <span>Page {cursors.length}</span>
      <button type="button" disabled={!next} onClick={() => setCursors((c) => [...c, next ?? null])}>
        Next
      </button>
    </nav>
  );
}

/** A size in bytes, as people read it. */
export function bytes(n: number): string {
  if (n < 1024) return `${n} B`;
  if (n < 1024 ** 2) return `${(n / 1024).toFixed(1)} KiB`;
  if (n < 1024 ** 3) return `${(n / 1024 ** 2).toFixed(1)} MiB`;
  return `${(n / 1024 ** 3).toFixed(1)} GiB`;
}

/** Has the browser save what `url` (this origin's) serves as a file called `name`: it streams
 * the body to disk, so its size is not bounded by the page's memory. */
export function save(url: string, name: string) {
  const a = document.createElement("a");
  a.href = url;
  a.download = name;
  a.click();
}
