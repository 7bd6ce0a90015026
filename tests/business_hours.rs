//! Business hours: StartEngagement outside them fails with `opensAt`.

mod common;

use chrono::{Duration, Utc};
use common::TestServer;
use serde_json::json;

#[tokio::test]
async fn closed_days_refuse_with_the_next_opening() {
    // Open every day all day, in UTC, except yesterday, today and tomorrow:
    // closed now wherever the clock is, opening at midnight the day after
    // tomorrow.
    let today = Utc::now().date_naive();
    let day = |offset: i64| {
        (today + Duration::days(offset))
            .format("%Y-%m-%d")
            .to_string()
    };
    let config = format!(
        "[business_hours]\ntimezone = \"UTC\"\nopen = [ {{ days = \"mon-sun\", from = \"00:00\", to = \"24:00\" }} ]\nclosed_dates = [\"{}\", \"{}\", \"{}\"]\n",
        day(-1),
        day(0),
        day(1)
    );
    let server = TestServer::start(&config).await;
    let mut c = server.customer().await;
    let err = c.call("StartEngagement", json!({})).await.unwrap_err();
    assert_eq!(err["code"], "outside_business_hours");
    assert_eq!(err["opensAt"], format!("{}T00:00:00.000Z", day(2)));
    server.shutdown().await;
}

#[tokio::test]
async fn open_hours_allow_engagements() {
    let server = TestServer::start(
        "[business_hours]\ntimezone = \"Europe/London\"\nopen = [ { days = \"daily\", from = \"00:00\", to = \"24:00\" } ]\n",
    )
    .await;
    let mut c = server.customer().await;
    c.call("StartEngagement", json!({})).await.unwrap();
    server.shutdown().await;
}
