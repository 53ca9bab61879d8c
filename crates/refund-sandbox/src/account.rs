//! The sandbox's account: the credentials its fakes hand out and accept, as a provider's
//! test account would publish them. The worker's built-in defaults (`config/default.toml`)
//! name this account so `demo` and a fresh `run --providers-url` work out of the box; a test
//! in the worker crate checks the two agree. The sandbox itself reads no product
//! configuration.
//!
//! Provider keys are checked by their documented shape only (a Stripe secret key starts with
//! `sk_test_`, an Asaas key with `$aact_`, …), so any key of the right kind is accepted; the
//! tokens below are the ones this account issues. The ERP, invoicing and WhatsApp services
//! compare the exact values.

/// A Stripe test-mode secret key (`Authorization: Bearer sk_test_…`).
pub const STRIPE_SECRET_KEY: &str = "sk_test_sandbox";
/// A Mercado Pago test access token (`Authorization: Bearer TEST-…`).
pub const MERCADOPAGO_ACCESS_TOKEN: &str = "TEST-sandbox-access-token";
/// An Asaas sandbox API key (`access_token: $aact_hmlg_…`).
pub const ASAAS_API_KEY: &str = "$aact_hmlg_sandbox";

/// The Omie app key (`app_key` in every call's body).
pub const ERP_APP_KEY: &str = "sandbox-app-key";
/// The Omie app secret (`app_secret` in every call's body).
pub const ERP_APP_SECRET: &str = "sandbox-app-secret";

/// The invoicing service's API key (`Authorization: Bearer …`).
pub const INVOICING_API_KEY: &str = "sandbox-invoicing-key";

/// The Z-API instance id (in the path).
pub const WHATSAPP_INSTANCE_ID: &str = "sandbox-instance";
/// The Z-API instance token (in the path).
pub const WHATSAPP_INSTANCE_TOKEN: &str = "sandbox-instance-token";
/// The Z-API account security token (`Client-Token` header).
pub const WHATSAPP_CLIENT_TOKEN: &str = "sandbox-client-token";
/// The API Pix OAuth2 client id (HTTP Basic at `/oauth/token`).
pub const PIX_CLIENT_ID: &str = "refund-worker";
/// The API Pix OAuth2 client secret.
pub const PIX_CLIENT_SECRET: &str = "sandbox-client-secret";
/// A Rinne API key (`x-api-key`).
pub const RINNE_API_KEY: &str = "sandbox-api-key";
/// The Rinne merchant id (in the path).
pub const RINNE_MERCHANT_ID: &str = "merchant-sandbox";
