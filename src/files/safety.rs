//! What decides how a file may be served and what may be stored: path validation, the inline
//! allow-list, markup sniffing and content-type patterns.

use super::{FilesError, Result};

/// The longest file path, in bytes.
pub(super) const MAX_PATH_BYTES: usize = 1024;

/// How many leading bytes of an upload are kept for sniffing.
pub(super) const SNIFF_BYTES: usize = 1024;

fn is_path_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
}

/// A file path as the API defines it: one or more `/`-separated segments of `[A-Za-z0-9._-]`,
/// none of them `.` or `..`, at most 1024 bytes. Checked on the raw request path, so an encoded
/// byte (`%2e`, `%00`, `%2f`) is refused rather than decoded.
pub(crate) fn check_path(path: &str) -> Result<()> {
    let bad = |why: &str| {
        Err(FilesError::BadRequest(format!(
            "invalid file path: {why}; use segments of A-Z a-z 0-9 . _ - separated by /"
        )))
    };
    if path.is_empty() {
        return bad("it is empty");
    }
    if path.len() > MAX_PATH_BYTES {
        return bad("it is longer than 1024 bytes");
    }
    for segment in path.split('/') {
        match segment {
            "" => return bad("it has an empty segment"),
            "." | ".." => return bad("`.` and `..` are not allowed"),
            s if !s.bytes().all(is_path_byte) => return bad("it has a character outside the set"),
            _ => {}
        }
    }
    Ok(())
}

/// A listing prefix: the characters of a path, possibly ending mid-segment or with `/`.
pub(super) fn check_prefix(prefix: &str) -> Result<()> {
    if prefix.len() <= MAX_PATH_BYTES && prefix.bytes().all(|b| is_path_byte(b) || b == b'/') {
        Ok(())
    } else {
        Err(FilesError::BadRequest(
            "invalid prefix: use at most 1024 of A-Z a-z 0-9 . _ - /".into(),
        ))
    }
}

/// Types a browser may render in place. Everything else is a download.
pub(crate) fn inline_type(content_type: &str) -> bool {
    let essence = essence(content_type);
    let (kind, sub) = essence.split_once('/').unwrap_or((essence.as_str(), ""));
    match kind {
        "image" => matches!(
            sub,
            "png" | "jpeg" | "gif" | "webp" | "avif" | "bmp" | "x-icon" | "vnd.microsoft.icon"
        ),
        "audio" | "video" => !sub.contains("xml"),
        "application" => sub == "pdf",
        "text" => sub == "plain",
        _ => false,
    }
}

/// The lower-cased `type/subtype` of a content type, without parameters.
pub(super) fn essence(content_type: &str) -> String {
    content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase()
}

/// Whether the first bytes of a file look like HTML, SVG or XML, which a browser could run
/// whatever type the file was uploaded with.
pub(crate) fn looks_like_markup(head: &[u8]) -> bool {
    let text: Vec<u8> = head.iter().map(u8::to_ascii_lowercase).collect();
    let text = text.strip_prefix(b"\xef\xbb\xbf").unwrap_or(&text);
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(text.len());
    let body = &text[start..];
    // The HTML signatures of the WHATWG sniffing algorithm, followed by a space or `>`.
    const TAGS: [&[u8]; 17] = [
        b"<!doctype html",
        b"<html",
        b"<head",
        b"<script",
        b"<iframe",
        b"<h1",
        b"<div",
        b"<font",
        b"<table",
        b"<a",
        b"<style",
        b"<title",
        b"<b",
        b"<body",
        b"<br",
        b"<p",
        b"<!--",
    ];
    let leading_tag = TAGS.iter().any(|tag| {
        body.strip_prefix(*tag)
            .is_some_and(|rest| matches!(rest.first(), None | Some(b' ' | b'>' | b'\t' | b'\n')))
    });
    // Markup that does not start the file but a browser would still find.
    const ANYWHERE: [&[u8]; 5] = [b"<?xml", b"<svg", b"<html", b"<script", b"<!doctype"];
    leading_tag
        || ANYWHERE
            .iter()
            .any(|needle| body.windows(needle.len()).any(|w| w == *needle))
}

/// A bucket's `content_types` entry: `type/subtype` or `type/*`.
pub(super) fn check_type_pattern(pattern: &str) -> bool {
    let essence = essence(pattern);
    essence.len() == pattern.trim().len()
        && essence.split_once('/').is_some_and(|(kind, sub)| {
            let token = |s: &str| {
                !s.is_empty()
                    && s.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
            };
            token(kind) && (sub == "*" || token(sub))
        })
}

/// Whether a content type is allowed by a list of patterns.
pub(super) fn type_allowed(content_type: &str, patterns: &[String]) -> bool {
    let essence = essence(content_type);
    patterns.iter().any(|pattern| {
        let pattern = self::essence(pattern);
        match pattern.strip_suffix("/*") {
            Some(kind) => essence.split_once('/').is_some_and(|(k, _)| k == kind),
            None => pattern == essence,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths() {
        for ok in ["a", "a/b.png", "x/y/z-1_2.tar.gz", "..a", "a..", ".hidden"] {
            assert!(check_path(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(1025);
        for bad in [
            "", "/a", "a/", "a//b", ".", "..", "a/../b", "a/./b", "a\\b", "a%2eb", "a\0b", "a b",
            "é", &long,
        ] {
            assert!(check_path(bad).is_err(), "{bad:?}");
        }
        assert!(check_path(&"a".repeat(1024)).is_ok());
    }

    #[test]
    fn inline_allow_list() {
        for inline in [
            "image/png",
            "IMAGE/JPEG; q=1",
            "video/mp4",
            "application/pdf",
            "text/plain; charset=utf-8",
        ] {
            assert!(inline_type(inline), "{inline}");
        }
        for attachment in [
            "image/svg+xml",
            "text/html",
            "application/xml",
            "text/xml",
            "application/octet-stream",
            "text/javascript",
            "",
        ] {
            assert!(!inline_type(attachment), "{attachment}");
        }
    }

    #[test]
    fn markup_sniffing() {
        for markup in [
            &b"<!DOCTYPE html><p>x"[..],
            b"\xef\xbb\xbf  <HTML>",
            b"<svg xmlns='http://www.w3.org/2000/svg'/>",
            b"<?xml version='1.0'?><svg/>",
            b"\n\n<script>alert(1)</script>",
            b"GIF89a....<script>",
        ] {
            assert!(
                looks_like_markup(markup),
                "{}",
                String::from_utf8_lossy(markup)
            );
        }
        for plain in [
            &b"\x89PNG\r\n\x1a\n"[..],
            b"hello <world>",
            b"<abbr>",
            b"a < b",
        ] {
            assert!(
                !looks_like_markup(plain),
                "{}",
                String::from_utf8_lossy(plain)
            );
        }
    }

    #[test]
    fn type_patterns() {
        assert!(check_type_pattern("image/*"));
        assert!(check_type_pattern("application/pdf"));
        for bad in ["image", "*/*x", "image/png; a=b", "", "/png"] {
            assert!(!check_type_pattern(bad), "{bad}");
        }
        let allowed = ["image/*".to_string(), "application/pdf".to_string()];
        assert!(type_allowed("image/png", &allowed));
        assert!(type_allowed("Application/PDF; x=y", &allowed));
        assert!(!type_allowed("text/html", &allowed));
        assert!(!type_allowed("imagex/png", &allowed));
    }
}
