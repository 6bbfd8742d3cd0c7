// Routes are paths under /_/ (the server answers index.html for each), moved between with the
// History API so that links, reloads and the back button work.
import { useEffect, useState } from "preact/hooks";

const BASE = "/_";

/** The route: the path after /_, such as `/collections/posts`. */
export function route(): string {
  const path = location.pathname.startsWith(BASE) ? location.pathname.slice(BASE.length) : "/";
  return path === "" ? "/" : path;
}

export function navigate(to: string): void {
  if (to === route()) return;
  history.pushState(null, "", BASE + to);
  dispatchEvent(new PopStateEvent("popstate"));
}

export function useRoute(): string {
  const [current, setCurrent] = useState(route());
  useEffect(() => {
    const changed = () => setCurrent(route());
    addEventListener("popstate", changed);
    return () => removeEventListener("popstate", changed);
  }, []);
  return current;
}

/** The href of a route, for links that also open in a new tab. */
export function href(to: string): string {
  return BASE + to;
}

/** A click on an in-app link, handled without a page load (modified clicks open tabs). */
export function follow(event: MouseEvent, to: string): void {
  if (event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  event.preventDefault();
  navigate(to);
}
