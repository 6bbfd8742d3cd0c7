// A JSON text editor (CodeMirror, loaded on first use).
import { useEffect, useRef } from "preact/hooks";
import type { EditorView } from "codemirror";

export function JsonEditor(props: { value: string; label: string; onChange: (text: string) => void }) {
  const box = useRef<HTMLDivElement>(null);
  const view = useRef<EditorView | null>(null);
  const onChange = useRef(props.onChange);
  onChange.current = props.onChange;
  useEffect(() => {
    let cancelled = false;
    void import("./editor").then(({ jsonEditor }) => {
      if (cancelled || !box.current) return;
      view.current = jsonEditor(box.current, props.value, props.label, (text) => onChange.current(text));
    });
    return () => {
      cancelled = true;
      view.current?.destroy();
      view.current = null;
    };
  }, []);
  // A new value from outside (a reload) replaces the text.
  useEffect(() => {
    const v = view.current;
    if (v && v.state.doc.toString() !== props.value) {
      v.dispatch({ changes: { from: 0, to: v.state.doc.length, insert: props.value } });
    }
  }, [props.value]);
  return <div class="json-editor" ref={box} />;
}
