//! Integration tests against the real RabbitMQ (127.0.0.1:5672) and Redis (127.0.0.1:6379).
//! Each test runs under its own queue prefix and Redis namespace, with its own sandbox.
// Test helpers are `pub` for their sibling modules; the test binary exports nothing.
#![allow(unreachable_pub)]

mod audit;
mod bench;
mod browser;
mod chaos;
mod console;
mod faults;
mod governed;
mod helpers;
mod hostile;
mod insiders;
mod key_layout;
mod malformed;
mod mandates;
mod metrics;
mod observability;
mod ops;
mod pipeline;
mod private_rabbit;
mod processes;
mod provider_asaas;
mod provider_mercadopago;
mod provider_pix;
mod provider_rinne;
mod receipts;
mod sandbox;
mod services;
