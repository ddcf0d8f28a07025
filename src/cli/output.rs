//! Printing results: JSON (exactly one value on stdout) or human-readable text, and errors
//! (one line on stderr, plus `{"error": ...}` on stdout in JSON mode).

use serde::Serialize;

/// Prints `value` as one line of JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) {
    println!("{}", serde_json::to_string(value).expect("serializable output"));
}

/// Prints an error as one line: the whole anyhow context chain joined with ": ".
pub fn print_error(e: &anyhow::Error, json: bool) {
    let line = format!("{e:#}").replace('\n', " ");
    if json {
        print_json(&serde_json::json!({ "error": line }));
    }
    eprintln!("qsplit: error: {line}");
}

/// Prints an error the daemon returned.
pub fn print_error_value(e: &crate::api::ApiError, json: bool) {
    if json {
        print_json(&serde_json::json!({ "error": e.message, "kind": e.kind }));
    }
    eprintln!("qsplit: error: {}", e.message.replace('\n', " "));
}
