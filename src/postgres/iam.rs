//! RDS IAM database authentication (`--db-auth rds-iam`): every new
//! connection's password is a token minted here, a SigV4-presigned
//! `Action=connect&DBUser=<user>` for service `rds-db`, valid 15 minutes.
//! Nothing to rotate: the task role's credentials sign each token.
//!
//! Credentials come from the ECS container credentials endpoint
//! (`AWS_CONTAINER_CREDENTIALS_RELATIVE_URI` or `_FULL_URI`, cached until
//! [`CREDENTIALS_REFRESH_BEFORE`] their `Expiration`), else from
//! `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
//! Signing is the `aws-sigv4` crate's. Never logs a secret or a token.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_sigv4::http_request::{
    SignableBody, SignableRequest, SignatureLocation, SigningSettings, sign,
};
use aws_sigv4::sign::v4;

use super::Error;
use crate::http_get;

/// How long a token is valid (the longest RDS accepts).
const TOKEN_LIFETIME: Duration = Duration::from_secs(15 * 60);

/// Container credentials are fetched again this long before they expire.
const CREDENTIALS_REFRESH_BEFORE: Duration = Duration::from_secs(5 * 60);

/// The ECS container credentials endpoint's address.
const CONTAINER_ENDPOINT: &str = "http://169.254.170.2";

/// The credentials endpoint's whole budget.
const CREDENTIALS_TIMEOUT: Duration = Duration::from_secs(2);

/// AWS credentials; the secret never leaves this module but in a signature.
#[derive(Clone)]
pub struct Credentials {
    access_key_id: String,
    secret_access_key: String,
    session_token: Option<String>,
    /// When they stop working (container credentials), in Unix seconds.
    expires_unix_s: Option<u64>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// Where credentials come from.
enum Source {
    /// The process environment, fixed.
    Environment(Credentials),
    /// The container credentials endpoint, with its authorization header.
    Container {
        url: String,
        authorization: Option<String>,
    },
}

/// Mints RDS IAM authentication tokens.
pub struct IamAuth {
    region: String,
    source: Source,
    cached: Mutex<Option<Credentials>>,
}

impl IamAuth {
    /// The region and credential source the environment describes.
    pub fn from_env(env: &impl Fn(&str) -> Option<String>) -> Result<Self, Error> {
        let region = env("AWS_REGION")
            .or_else(|| env("AWS_DEFAULT_REGION"))
            .ok_or_else(|| Error::Setting("--db-auth rds-iam: AWS_REGION is not set".into()))?;
        let container_url = env("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI")
            .map(|uri| format!("{CONTAINER_ENDPOINT}{uri}"))
            .or_else(|| env("AWS_CONTAINER_CREDENTIALS_FULL_URI"));
        let source = match container_url {
            Some(url) => Source::Container {
                url,
                authorization: env("AWS_CONTAINER_AUTHORIZATION_TOKEN"),
            },
            None => Source::Environment(Credentials {
                access_key_id: env("AWS_ACCESS_KEY_ID").ok_or_else(no_credentials)?,
                secret_access_key: env("AWS_SECRET_ACCESS_KEY").ok_or_else(no_credentials)?,
                session_token: env("AWS_SESSION_TOKEN"),
                expires_unix_s: None,
            }),
        };
        Ok(Self {
            region,
            source,
            cached: Mutex::new(None),
        })
    }

    /// A token for `user` at `host:port`, signed now.
    pub async fn token(&self, host: &str, port: u16, user: &str) -> Result<String, Error> {
        let credentials = self.credentials().await?;
        sign_token(
            host,
            port,
            user,
            &self.region,
            &credentials,
            SystemTime::now(),
        )
    }

    /// The credentials: fixed, cached, or fetched again.
    async fn credentials(&self) -> Result<Credentials, Error> {
        let (url, authorization) = match &self.source {
            Source::Environment(credentials) => return Ok(credentials.clone()),
            Source::Container { url, authorization } => (url.clone(), authorization.clone()),
        };
        let now_s = unix_s(SystemTime::now());
        let fresh = |credentials: &Credentials| {
            credentials
                .expires_unix_s
                .is_none_or(|expires| now_s + CREDENTIALS_REFRESH_BEFORE.as_secs() < expires)
        };
        if let Some(cached) = self.cached.lock().expect("credentials lock").clone()
            && fresh(&cached)
        {
            return Ok(cached);
        }
        let fetched = tokio::task::spawn_blocking(move || {
            let headers: Vec<(&str, &str)> = authorization
                .as_deref()
                .map(|value| ("Authorization", value))
                .into_iter()
                .collect();
            http_get::get(&url, &headers, CREDENTIALS_TIMEOUT)
        })
        .await
        .map_err(|error| credentials_error(&error))?
        .map_err(|error| credentials_error(&error))?;
        if fetched.status != 200 {
            return Err(credentials_error(&fetched.status_line));
        }
        let credentials = parse_container_credentials(fetched.body)?;
        *self.cached.lock().expect("credentials lock") = Some(credentials.clone());
        Ok(credentials)
    }
}

fn no_credentials() -> Error {
    Error::Setting(
        "--db-auth rds-iam: no AWS credentials (container credentials endpoint or \
         AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY)"
            .into(),
    )
}

fn credentials_error(error: &dyn std::fmt::Display) -> Error {
    Error::Credentials(format!("container credentials endpoint: {error}"))
}

/// The endpoint's JSON: `AccessKeyId`, `SecretAccessKey`, `Token`,
/// `Expiration` (RFC 3339, UTC).
fn parse_container_credentials(mut body: Vec<u8>) -> Result<Credentials, Error> {
    use simd_json::prelude::*;
    let value = simd_json::to_owned_value(&mut body)
        .map_err(|_| Error::Credentials("container credentials: not JSON".into()))?;
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_owned);
    let missing = |name: &str| Error::Credentials(format!("container credentials: no {name}"));
    let expiration = field("Expiration").ok_or_else(|| missing("Expiration"))?;
    Ok(Credentials {
        access_key_id: field("AccessKeyId").ok_or_else(|| missing("AccessKeyId"))?,
        secret_access_key: field("SecretAccessKey").ok_or_else(|| missing("SecretAccessKey"))?,
        session_token: field("Token"),
        expires_unix_s: Some(
            parse_rfc3339_utc(&expiration).ok_or_else(|| missing("valid Expiration"))?,
        ),
    })
}

/// `YYYY-MM-DDTHH:MM:SS[.fff]Z` → Unix seconds.
fn parse_rfc3339_utc(text: &str) -> Option<u64> {
    let text = text.strip_suffix('Z')?;
    let (date, time) = text.split_once('T')?;
    let mut date = date.split('-').map(|part| part.parse::<i64>().ok());
    let (year, month, day) = (date.next()??, date.next()??, date.next()??);
    let time = time.split('.').next()?;
    let mut time = time.split(':').map(|part| part.parse::<i64>().ok());
    let (hour, minute, second) = (time.next()??, time.next()??, time.next()??);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 {
        return None;
    }
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * ((month + 9) % 12) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = era * 146_097 + day_of_era - 719_468;
    u64::try_from(days * 86_400 + hour * 3_600 + minute * 60 + second).ok()
}

fn unix_s(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The token: `host:port/?Action=connect&DBUser=user&X-Amz-…`, presigned
/// at `time` for [`TOKEN_LIFETIME`].
pub fn sign_token(
    host: &str,
    port: u16,
    user: &str,
    region: &str,
    credentials: &Credentials,
    time: SystemTime,
) -> Result<String, Error> {
    let signing = |error: &dyn std::fmt::Display| Error::Credentials(format!("signing: {error}"));
    let identity = aws_credential_types::Credentials::new(
        &credentials.access_key_id,
        &credentials.secret_access_key,
        credentials.session_token.clone(),
        None,
        "saldos",
    )
    .into();
    let mut settings = SigningSettings::default();
    settings.signature_location = SignatureLocation::QueryParams;
    settings.expires_in = Some(TOKEN_LIFETIME);
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region(region)
        .name("rds-db")
        .time(time)
        .settings(settings)
        .build()
        .map_err(|error| signing(&error))?
        .into();
    let url = format!("https://{host}:{port}/?Action=connect&DBUser={user}");
    let signable = SignableRequest::new("GET", &url, std::iter::empty(), SignableBody::Bytes(&[]))
        .map_err(|error| signing(&error))?;
    let (instructions, _signature) = sign(signable, &params)
        .map_err(|error| signing(&error))?
        .into_parts();
    let mut request = http::Request::builder()
        .uri(&url)
        .body(())
        .map_err(|error| signing(&error))?;
    instructions.apply_to_request_http1x(&mut request);
    let signed = request.uri().to_string();
    Ok(signed
        .strip_prefix("https://")
        .unwrap_or(&signed)
        .to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// botocore 1.40.0's `generate_db_auth_token` with these credentials,
    /// host, user and time: `testdata/rds_token.py` prints it.
    const BOTOCORE_TOKEN: &str = "saldos.cluster-abc.eu-west-1.rds.amazonaws.com:5432/\
        ?Action=connect&DBUser=app_saldos&X-Amz-Algorithm=AWS4-HMAC-SHA256\
        &X-Amz-Credential=AKIDEXAMPLE%2F20261128%2Feu-west-1%2Frds-db%2Faws4_request\
        &X-Amz-Date=20261128T120000Z&X-Amz-Expires=900&X-Amz-SignedHeaders=host\
        &X-Amz-Security-Token=SESSIONTOKEN%2Fexample%2B%3D\
        &X-Amz-Signature=0af6ffb0ffb53d26e485a618bf6c7abd865ff0103de4500fe4d0e5ccd1ec5122";

    /// The part before `?` and the query's pairs, sorted (the order of query
    /// parameters is not part of the signature).
    fn parts(token: &str) -> (&str, Vec<&str>) {
        let (base, query) = token.split_once('?').unwrap();
        let mut pairs: Vec<&str> = query.split('&').collect();
        pairs.sort_unstable();
        (base, pairs)
    }

    #[test]
    fn tokens_match_botocore() {
        let credentials = Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: Some("SESSIONTOKEN/example+=".into()),
            expires_unix_s: None,
        };
        let time =
            UNIX_EPOCH + Duration::from_secs(parse_rfc3339_utc("2026-11-28T12:00:00Z").unwrap());
        let token = sign_token(
            "saldos.cluster-abc.eu-west-1.rds.amazonaws.com",
            5432,
            "app_saldos",
            "eu-west-1",
            &credentials,
            time,
        )
        .unwrap();
        assert_eq!(parts(&token), parts(BOTOCORE_TOKEN));
        // Another second, another signature.
        let later = sign_token("h", 5432, "u", "eu-west-1", &credentials, time).unwrap();
        let sooner = sign_token(
            "h",
            5432,
            "u",
            "eu-west-1",
            &credentials,
            time + Duration::from_secs(1),
        )
        .unwrap();
        assert_ne!(later, sooner);
    }

    #[test]
    fn container_credentials_parse() {
        let body = br#"{"RoleArn":"arn:aws:iam::1:role/r","AccessKeyId":"ASIA1","SecretAccessKey":"s","Token":"t","Expiration":"2026-11-28T17:02:53Z"}"#;
        let credentials = parse_container_credentials(body.to_vec()).unwrap();
        assert_eq!(credentials.access_key_id, "ASIA1");
        assert_eq!(credentials.session_token.as_deref(), Some("t"));
        assert_eq!(credentials.expires_unix_s, Some(1_795_885_373));
        assert!(parse_container_credentials(b"{}".to_vec()).is_err());
        assert_eq!(parse_rfc3339_utc("1970-01-01T00:00:00Z"), Some(0));
        assert_eq!(
            parse_rfc3339_utc("2000-03-01T00:00:00.123Z"),
            Some(951_868_800)
        );
        assert_eq!(parse_rfc3339_utc("2026-13-01T00:00:00Z"), None);
        assert_eq!(parse_rfc3339_utc("2026-11-28 12:00:00"), None);
    }

    // The region is required; without a container endpoint, the keys are.
    #[test]
    fn the_environment_must_name_region_and_credentials() {
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |name: &str| {
                pairs
                    .iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| (*v).to_owned())
            }
        };
        assert!(
            IamAuth::from_env(&env(&[
                ("AWS_ACCESS_KEY_ID", "a"),
                ("AWS_SECRET_ACCESS_KEY", "s")
            ]))
            .is_err()
        );
        assert!(IamAuth::from_env(&env(&[("AWS_REGION", "eu-west-1")])).is_err());
        let keys = IamAuth::from_env(&env(&[
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "a"),
            ("AWS_SECRET_ACCESS_KEY", "s"),
        ]))
        .unwrap();
        assert!(matches!(keys.source, Source::Environment(_)));
        let container = IamAuth::from_env(&env(&[
            ("AWS_REGION", "eu-west-1"),
            (
                "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
                "/v2/credentials/x",
            ),
        ]))
        .unwrap();
        assert!(matches!(
            container.source,
            Source::Container { ref url, .. } if url == "http://169.254.170.2/v2/credentials/x"
        ));
    }

    // Container credentials: fetched with the authorization header, then
    // cached while far from expiry; fetched again when close to it.
    #[tokio::test]
    async fn container_credentials_are_fetched_and_cached() {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let far = unix_s(SystemTime::now()) + 3_600;
        let server = std::thread::spawn(move || {
            let mut requests = Vec::new();
            for expires in [far, 0] {
                let (mut stream, _) = listener.accept().unwrap();
                let mut request = [0u8; 1024];
                let read = stream.read(&mut request).unwrap();
                requests.push(String::from_utf8_lossy(&request[..read]).into_owned());
                let body = format!(
                    r#"{{"AccessKeyId":"ASIA{expires}","SecretAccessKey":"s","Token":"t","Expiration":"{}"}}"#,
                    if expires == 0 {
                        "2000-01-01T00:00:00Z".to_owned()
                    } else {
                        rfc3339(expires)
                    }
                );
                let response = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                stream.write_all(response.as_bytes()).unwrap();
            }
            requests
        });
        let env = move |name: &str| match name {
            "AWS_REGION" => Some("eu-west-1".to_owned()),
            "AWS_CONTAINER_CREDENTIALS_FULL_URI" => Some(format!("http://127.0.0.1:{port}/creds")),
            "AWS_CONTAINER_AUTHORIZATION_TOKEN" => Some("secreto".to_owned()),
            _ => None,
        };
        let auth = IamAuth::from_env(&env).unwrap();
        let first = auth.token("h", 5432, "u").await.unwrap();
        let cached = auth.token("h", 5432, "u").await.unwrap();
        assert!(first.contains(&format!("ASIA{far}")) && cached.contains(&format!("ASIA{far}")));
        // Expired: the next token fetches again.
        let soon = Credentials {
            expires_unix_s: Some(unix_s(SystemTime::now()) + 60),
            ..auth.cached.lock().unwrap().clone().unwrap()
        };
        *auth.cached.lock().unwrap() = Some(soon);
        let refreshed = auth.token("h", 5432, "u").await.unwrap();
        assert!(refreshed.contains("ASIA0"), "{refreshed}");
        let requests = server.join().unwrap();
        assert_eq!(requests.len(), 2, "the second token came from the cache");
        assert!(requests[0].starts_with("GET /creds HTTP/1.0"));
        assert!(requests[0].contains("Authorization: secreto"));
    }

    /// Unix seconds as RFC 3339 (for the fake endpoint).
    fn rfc3339(unix_s: u64) -> String {
        let days = unix_s / 86_400;
        let seconds = unix_s % 86_400;
        // Civil date from days (Howard Hinnant's algorithm), inverse of the parser.
        let z = days as i64 + 719_468;
        let era = z.div_euclid(146_097);
        let day_of_era = z - era * 146_097;
        let year_of_era =
            (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
        let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
        let mp = (5 * day_of_year + 2) / 153;
        let day = day_of_year - (153 * mp + 2) / 5 + 1;
        let month = if mp < 10 { mp + 3 } else { mp - 9 };
        let year = year_of_era + era * 400 + i64::from(month <= 2);
        format!(
            "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
            seconds / 3_600,
            seconds / 60 % 60,
            seconds % 60
        )
    }
}
