// Load harness: a JavaScript before_create hook that lets every write through.
export default function handle(event) {
  return null;
}
