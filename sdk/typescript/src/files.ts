import type { components } from "./generated/schema.js";
import { EmberbaseError } from "./errors.js";
import { encodePath, Transport } from "./http.js";

export type FileInfo = components["schemas"]["FileInfo"];
export type FilePage = components["schemas"]["FilePage"];

/** What an upload takes. */
export type FileBody = Blob | ArrayBuffer | ArrayBufferView | string;

export interface UploadOptions {
  /** Stored and sent back on download; default: the Blob's type, else `application/octet-stream`. */
  contentType?: string;
  /**
   * Called as the bytes leave, with how many have and how many there are (a progress bar). In
   * browsers the upload then goes through XMLHttpRequest; elsewhere it is called once, at the end.
   */
  onProgress?: (sent: number, total: number) => void;
}

export interface FileListOptions {
  prefix?: string;
  limit?: number;
  cursor?: string | null;
}

/** Files in buckets: `eb.files.upload("avatars", "me.png", blob)`. */
export class Files {
  constructor(private readonly transport: Transport) {}

  private path(bucket: string, path: string, route = "files"): string {
    // A URL parser would collapse `.` and `..` (even encoded) into another path: refuse them here.
    if (path.split("/").some((s) => s === "." || s === "..")) {
      throw new EmberbaseError(400, "bad_request", "a file path segment cannot be `.` or `..`");
    }
    return `/v1/${route}/${encodeURIComponent(bucket)}/${encodePath(path)}`;
  }

  /** Uploads (or replaces) a file; its bytes are on disk when this resolves. */
  async upload(bucket: string, path: string, body: FileBody, options: UploadOptions = {}): Promise<FileInfo> {
    const type =
      options.contentType ?? (body instanceof Blob && body.type ? body.type : "application/octet-stream");
    const headers = { "Content-Type": type };
    const progress = options.onProgress;
    if (progress && typeof XMLHttpRequest !== "undefined") {
      const text = await this.transport.sendWithProgress("PUT", this.path(bucket, path), headers, body as XMLHttpRequestBodyInit, progress);
      return JSON.parse(text) as FileInfo;
    }
    const response = await this.transport.fetch(this.path(bucket, path), { method: "PUT", headers, body: body as BodyInit });
    const info = (await response.json()) as FileInfo;
    progress?.(info.size, info.size);
    return info;
  }

  /** Downloads a file's bytes. */
  async download(bucket: string, path: string): Promise<Blob> {
    const response = await this.transport.fetch(this.path(bucket, path));
    return response.blob();
  }

  /**
   * The file's plain URL, for buckets that anyone may read. For private files use `sign`, or
   * `download` (which sends the token).
   */
  url(bucket: string, path: string): string {
    return this.transport.url(this.path(bucket, path));
  }

  /** A URL that serves the file without a token until it expires (1 s to 7 days; default 1 h). */
  async sign(bucket: string, path: string, expiresIn?: number): Promise<{ url: string; expires_at: string }> {
    const response = await this.transport.fetch(this.path(bucket, path, "sign"), {
      method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify(expiresIn === undefined ? {} : { expires_in: expiresIn }),
    });
    const signed = (await response.json()) as { url: string; expires_at: string };
    return { ...signed, url: this.transport.url(signed.url) };
  }

  /** One page of a bucket's files, by path. */
  list(bucket: string, options: FileListOptions = {}): Promise<FilePage> {
    const query = {
      prefix: options.prefix,
      limit: options.limit,
      cursor: options.cursor ?? undefined,
    };
    return this.transport.call((headers) =>
      this.transport.api.GET("/v1/files/{bucket}", { params: { path: { bucket }, query }, headers }),
    ) as Promise<FilePage>;
  }

  /** Deletes a file. */
  async delete(bucket: string, path: string): Promise<void> {
    await this.transport.fetch(this.path(bucket, path), { method: "DELETE" });
  }
}
