// CodeMirror for JSON, loaded when first needed. Its styles are made at run time: they carry
// the nonce the server put in the page's policy (style-src 'nonce-…'), read from the page.
import { basicSetup, EditorView } from "codemirror";
import { json } from "@codemirror/lang-json";
import { EditorState } from "@codemirror/state";

function nonce(): string {
  return document.querySelector<HTMLMetaElement>('meta[name="csp-nonce"]')?.content ?? "";
}

export function jsonEditor(parent: HTMLElement, text: string, label: string, changed: (text: string) => void): EditorView {
  return new EditorView({
    parent,
    state: EditorState.create({
      doc: text,
      extensions: [
        basicSetup,
        json(),
        EditorView.cspNonce.of(nonce()),
        EditorView.lineWrapping,
        EditorView.contentAttributes.of({ "aria-label": label }),
        EditorView.updateListener.of((update) => {
          if (update.docChanged) changed(update.state.doc.toString());
        }),
      ],
    }),
  });
}
