//! A small key-value API for the store's system records (accounts, tokens, the mail outbox),
//! with compare-and-set writes committed like documents are: durable on acknowledgement, and
//! atomic with their checks.

use crate::model::AccountEvent;

/// A namespace of system records. Each has its own key prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Space {
    /// User id → user record.
    Users,
    /// An email address in lower case (or, for accounts whose addresses differ only in case,
    /// exactly as stored) → user id.
    Emails,
    /// An email address in lower case → the accounts whose addresses differ only in case.
    EmailCollisions,
    /// What the accounts' records have been migrated to (see `auth::accounts::identity`).
    AccountsMeta,
    /// SHA-256 of an MFA token → the login waiting for its second factor.
    MfaChallenges,
    /// An email address in lower case → its pending passwordless sign-in (code and link).
    Passwordless,
    /// Provider name `00` the provider's subject → the user id it signs in as.
    Identities,
    /// Provider name → a sign-in provider added through the admin API.
    OAuthProviders,
    /// SHA-256 of a `state` → a sign-in with a provider waiting for its callback.
    OAuthStates,
    /// SHA-256 of a one-time code → a finished redirect sign-in waiting for the app's exchange.
    OAuthCodes,
    /// SHA-256 of an ID token an app exchanged → until when it is kept (single use).
    OAuthUsed,
    /// SHA-256 of a refresh token → refresh record.
    RefreshTokens,
    /// Login family id → family record.
    Families,
    /// User id `00` login family id → the family id: a user's logins (see
    /// `auth::accounts::logins`).
    UserFamilies,
    /// SHA-256 of a one-time email token → token record.
    EmailTokens,
    /// Message id (a ULID) → outgoing mail.
    Outbox,
    /// Message id → a mail waiting for its next SMTP attempt (the mail queue).
    MailQueue,
    /// Bucket name → bucket configuration JSON.
    Buckets,
    /// Function name → function record.
    Functions,
    /// Function name `00` sequence → a pending trigger event (the functions' outbox).
    Events,
    /// Function name `00` invocation id (a ULID) → invocation record.
    Invocations,
    /// Function name → the last schedule tick fired.
    Schedules,
    /// Function name `00` version (4 bytes, big-endian) → a kept version of its module.
    FunctionVersions,
    /// Function name `00` day (`YYYY-MM-DD`) `00` measure → a counter of its usage that day.
    FunctionUsage,
    /// Function name `00` secret name → a function's secret, sealed (see `functions::secrets`).
    FunctionSecrets,
    /// Secret name → a server secret shared by the nodes of a cluster (see `secrets`).
    Secrets,
    /// SHA-256 of a Wasm module → the module, in a cluster (a single node keeps files).
    Modules,
    /// Function name → the lease of the node delivering its events, in a cluster.
    Leases,
    /// Limiter name `00` key → a shared throttling window, in a cluster (see `auth::throttle`).
    Throttle,
    /// Node `00` connection `00` subscription → a change to a realtime connection's
    /// subscriptions made on another node of a cluster (see `realtime::connection`).
    RealtimeControl,
    /// Node → when it last said it was alive (Unix seconds), for forwarding realtime control.
    RealtimeNodes,
    /// Webhook id → webhook record.
    Webhooks,
    /// Webhook id `00` sequence (or `FF` and a ULID, for account events and redeliveries) → a
    /// message waiting for delivery (the webhooks' queue).
    WebhookQueue,
    /// Webhook id `00` message id → a message that left the queue, delivered or dead, kept for
    /// redelivery.
    WebhookMessages,
    /// Webhook id `00` attempt id (a ULID) → the record of one delivery attempt.
    WebhookAttempts,
}

impl Space {
    fn tag(self) -> &'static [u8] {
        match self {
            Space::Users => b"user:",
            Space::Emails => b"email:",
            Space::EmailCollisions => b"emailcoll:",
            Space::AccountsMeta => b"accmeta:",
            Space::MfaChallenges => b"mfa:",
            Space::Passwordless => b"pwless:",
            Space::Identities => b"ident:",
            Space::OAuthProviders => b"oauthprov:",
            Space::OAuthStates => b"oauthst:",
            Space::OAuthCodes => b"oauthcode:",
            Space::OAuthUsed => b"oauthused:",
            Space::RefreshTokens => b"refresh:",
            Space::Families => b"family:",
            Space::UserFamilies => b"userfamily:",
            Space::EmailTokens => b"etoken:",
            Space::Outbox => b"outbox:",
            Space::MailQueue => b"mailq:",
            Space::Buckets => b"bucket:",
            Space::Functions => b"function:",
            Space::Events => b"event:",
            Space::Invocations => b"invocation:",
            Space::Schedules => b"schedule:",
            Space::FunctionVersions => b"fnversion:",
            Space::FunctionUsage => b"fnusage:",
            Space::FunctionSecrets => b"fnsecret:",
            Space::Secrets => b"secret:",
            Space::Modules => b"module:",
            Space::Leases => b"lease:",
            Space::Throttle => b"throttle:",
            Space::RealtimeControl => b"rtctl:",
            Space::RealtimeNodes => b"rtnode:",
            Space::Webhooks => b"webhook:",
            Space::WebhookQueue => b"whqueue:",
            Space::WebhookMessages => b"whmsg:",
            Space::WebhookAttempts => b"whattempt:",
        }
    }

    pub(super) fn prefix(self) -> Vec<u8> {
        self.tag().to_vec()
    }

    pub(crate) fn key(self, key: &[u8]) -> Vec<u8> {
        let mut k = self.prefix();
        k.extend_from_slice(key);
        k
    }
}

/// An atomic write of system records: every check must hold, or nothing is written.
#[derive(Debug, Default, Clone)]
pub(crate) struct KvWrite {
    /// `(space, key, expected)`: the stored value must equal `expected` (`None`: absent).
    pub checks: Vec<(Space, Vec<u8>, Option<Vec<u8>>)>,
    pub puts: Vec<(Space, Vec<u8>, Vec<u8>)>,
    pub deletes: Vec<(Space, Vec<u8>)>,
    /// Counters to add to, without reading them (concurrent adds never conflict).
    pub adds: Vec<(Space, Vec<u8>, i64)>,
    /// What the write does to an account, for the commit hooks to add their records.
    pub events: Vec<AccountEvent>,
}

impl KvWrite {
    pub(crate) fn check(
        mut self,
        space: Space,
        key: impl Into<Vec<u8>>,
        expected: Option<Vec<u8>>,
    ) -> Self {
        self.checks.push((space, key.into(), expected));
        self
    }

    pub(crate) fn put(
        mut self,
        space: Space,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Self {
        self.puts.push((space, key.into(), value.into()));
        self
    }

    pub(crate) fn delete(mut self, space: Space, key: impl Into<Vec<u8>>) -> Self {
        self.deletes.push((space, key.into()));
        self
    }

    /// Adds `delta` to the counter at `key` (read it with `engine::counter`). Adds to one
    /// counter are summed here (the usage of a batch of function runs), so the commit reads and
    /// writes each counter once.
    pub(crate) fn add(mut self, space: Space, key: impl Into<Vec<u8>>, delta: i64) -> Self {
        let key = key.into();
        let same = self
            .adds
            .iter_mut()
            .find(|(s, k, _)| *s == space && *k == key);
        match same.and_then(|(_, _, sum)| Some((sum.checked_add(delta)?, sum))) {
            Some((total, sum)) => *sum = total,
            // An overflow is left to the commit, which refuses it as it would have.
            None => self.adds.push((space, key, delta)),
        }
        self
    }

    /// Commits the records the commit hooks want for an account event with this write.
    pub(crate) fn event(mut self, event: AccountEvent) -> Self {
        self.events.push(event);
        self
    }

    /// Whether it writes configuration that nodes cache (functions, secrets), so that the other nodes
    /// of a cluster reload it.
    pub(super) fn changes_config(&self) -> bool {
        let cached =
            |space: &Space| matches!(space, Space::Functions | Space::Secrets | Space::Webhooks);
        self.puts.iter().any(|(s, _, _)| cached(s)) || self.deletes.iter().any(|(s, _)| cached(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn adds_to_one_counter_are_summed_until_they_would_overflow() {
        let write = KvWrite::default()
            .add(Space::FunctionUsage, b"f\0fuel".to_vec(), 5)
            .add(Space::FunctionUsage, b"f\0runs".to_vec(), 1)
            .add(Space::FunctionUsage, b"f\0fuel".to_vec(), 7)
            .add(Space::FunctionUsage, b"f\0runs".to_vec(), i64::MAX);
        assert_eq!(
            write.adds,
            vec![
                (Space::FunctionUsage, b"f\0fuel".to_vec(), 12),
                (Space::FunctionUsage, b"f\0runs".to_vec(), 1),
                (Space::FunctionUsage, b"f\0runs".to_vec(), i64::MAX),
            ]
        );
    }
}
