//! The one integration test binary: every test drives a real server over HTTP (or, for the
//! planner property test, through the in-process API of a real server).

mod aggregates;
mod auth;
mod backups;
mod cluster;
mod collections;
mod common;
mod crash;
mod docs;
mod documents;
mod embed;
mod engine;
mod fetch;
mod files;
mod function_mail;
mod functions;
mod fuzz;
mod hardening;
mod hooks;
mod javascript;
mod oauth;
mod operations;
mod pg;
mod project;
mod queries;
mod readme;
mod realtime;
mod relations;
mod s3;
mod scaffold;
mod schemas;
mod sdk;
mod storage;
mod traces;
mod transforms;
mod webhooks;
