//! The filters over gRPC: all-of tags, excluded tags, the created range (at or after, before;
//! to the microsecond), subscribed-only and all of them at once. Each export's count (the
//! metadata step's, and a dry run's) is the number of rows in its file, and the file holds
//! exactly the contacts the filter names. Then every refusal, and a `request_id` reused with
//! another filter.

use chrono::{DateTime, Utc};
use contact_export_client::{CreateExportRequest, ExportStatus, TagMatch};
use prost_types::Timestamp;
use tonic::Code;
use uuid::Uuid;

use super::fixture::{Contact, Workspace, tag_contact};
use super::harness::TestApp;
use super::{download_all, run_export};

/// Six contacts, created a second apart, and three tags:
///
/// | contact | tags    | unsubscribed |
/// |---------|---------|--------------|
/// | 1       | a, b    |              |
/// | 2       | a       |              |
/// | 3       | a, b, c | yes          |
/// | 4       | b       | yes          |
/// | 5       | c       |              |
/// | 6       |         | yes          |
struct Crm {
    app: TestApp,
    contacts: Vec<Contact>,
    /// The contacts' ids, in their order.
    ids: Vec<i64>,
    a: Uuid,
    b: Uuid,
    c: Uuid,
}

async fn crm() -> Crm {
    let app = TestApp::spawn().await;
    let contacts: Vec<Contact> = (1..=6)
        .map(|n| {
            let mut contact = Contact::numbered(n);
            contact.is_unsubscribed = [3, 4, 6].contains(&n);
            contact
        })
        .collect();
    let ids = app.ws.insert(&app.db, &contacts).await;
    let (a, b, c) = (
        app.ws.tag(&app.db, "a").await,
        app.ws.tag(&app.db, "b").await,
        app.ws.tag(&app.db, "c").await,
    );
    for (contact, tags) in [
        (1, vec![a, b]),
        (2, vec![a]),
        (3, vec![a, b, c]),
        (4, vec![b]),
        (5, vec![c]),
    ] {
        for tag in tags {
            tag_contact(&app.db, ids[contact - 1], tag).await;
        }
    }
    Crm {
        app,
        contacts,
        ids,
        a,
        b,
        c,
    }
}

fn ids(tags: &[Uuid]) -> Vec<String> {
    tags.iter().map(Uuid::to_string).collect()
}

fn timestamp(t: DateTime<Utc>) -> Timestamp {
    Timestamp {
        seconds: t.timestamp(),
        nanos: t.timestamp_subsec_nanos() as i32,
    }
}

/// `t` rounded up to the microsecond: the instant the service filters with (every contact's
/// `created_at` is whole microseconds, so "at or after" and "before" mean the same).
fn micros_up(t: Timestamp) -> Timestamp {
    let micros = (i64::from(t.nanos) + 999) / 1_000;
    Timestamp {
        seconds: t.seconds + micros / 1_000_000,
        nanos: (micros % 1_000_000 * 1_000) as i32,
    }
}

impl Crm {
    fn created(&self, n: usize) -> DateTime<Utc> {
        self.contacts[n - 1].created_at
    }

    /// Exports `request`, then checks its count, a dry run's count and the file's emails
    /// against the contacts numbered `want`.
    async fn expect(&self, what: &str, request: CreateExportRequest, want: &[u32]) {
        let client = &self.app.ws.client;
        let dry = client
            .create(CreateExportRequest {
                validate_only: true,
                ..request.clone()
            })
            .await
            .unwrap_or_else(|e| panic!("{what}: dry run: {e:?}"));
        assert_eq!(dry.total_rows, want.len() as i64, "{what}: dry run count");

        let done = run_export(client, request.clone()).await;
        assert_eq!(done.status(), ExportStatus::Completed, "{what}: {done:?}");
        assert_eq!(done.total_rows, want.len() as i64, "{what}: count");
        assert_eq!(done.processed_rows, want.len() as i64, "{what}: rows");
        // The export says which filter made it.
        let asked_match = match request.tag_match() {
            TagMatch::Unspecified => TagMatch::Any,
            asked => asked,
        };
        assert_eq!(done.tag_match(), asked_match, "{what}: resolved");
        assert_eq!(done.exclude_tag_ids, request.exclude_tag_ids, "{what}");
        assert_eq!(done.subscribed_only, request.subscribed_only, "{what}");
        // Instants as the service reads them: rounded up to the microsecond.
        assert_eq!(
            done.created_after,
            request.created_after.map(micros_up),
            "{what}"
        );
        assert_eq!(
            done.created_before,
            request.created_before.map(micros_up),
            "{what}"
        );

        let file = download_all(client, &done.id).await;
        let emails: Vec<&str> = file
            .lines()
            .skip(1)
            .map(|line| line.split(',').next().unwrap())
            .collect();
        let expected: Vec<String> = want
            .iter()
            .map(|n| format!("person{n}@example.com"))
            .collect();
        assert_eq!(emails, expected, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_filter_and_all_of_them_select_exactly_their_contacts() {
    let crm = crm().await;
    let (a, b, c) = (crm.a, crm.b, crm.c);

    crm.expect(
        "any of a, b (the default match)",
        CreateExportRequest {
            tag_ids: ids(&[a, b]),
            ..Default::default()
        },
        &[1, 2, 3, 4],
    )
    .await;
    crm.expect(
        "all of a, b",
        CreateExportRequest {
            tag_ids: ids(&[a, b]),
            tag_match: TagMatch::All.into(),
            ..Default::default()
        },
        &[1, 3],
    )
    .await;
    crm.expect(
        "none of c",
        CreateExportRequest {
            exclude_tag_ids: ids(&[c]),
            ..Default::default()
        },
        &[1, 2, 4, 6],
    )
    .await;
    crm.expect(
        "any of a, b but not c",
        CreateExportRequest {
            tag_ids: ids(&[a, b]),
            exclude_tag_ids: ids(&[c]),
            ..Default::default()
        },
        &[1, 2, 4],
    )
    .await;
    // At or after contact 2's instant (to its microsecond), before contact 5's.
    crm.expect(
        "created in [2, 5)",
        CreateExportRequest {
            created_after: Some(timestamp(crm.created(2))),
            created_before: Some(timestamp(crm.created(5))),
            ..Default::default()
        },
        &[2, 3, 4],
    )
    .await;
    // Half a microsecond past contact 2 leaves it out, and keeps contact 5 in.
    let nudge = chrono::Duration::nanoseconds(500);
    crm.expect(
        "created in (2, 5]",
        CreateExportRequest {
            created_after: Some(timestamp(crm.created(2) + nudge)),
            created_before: Some(timestamp(crm.created(5) + nudge)),
            ..Default::default()
        },
        &[3, 4, 5],
    )
    .await;
    crm.expect(
        "created before 3 only",
        CreateExportRequest {
            created_before: Some(timestamp(crm.created(3))),
            ..Default::default()
        },
        &[1, 2],
    )
    .await;
    crm.expect(
        "subscribed only",
        CreateExportRequest {
            subscribed_only: true,
            ..Default::default()
        },
        &[1, 2, 5],
    )
    .await;
    // Each condition removes a contact the others keep: c takes 3, the range 1, the
    // subscription 4.
    crm.expect(
        "all at once",
        CreateExportRequest {
            tag_ids: ids(&[a, b]),
            exclude_tag_ids: ids(&[c]),
            created_after: Some(timestamp(crm.created(2))),
            created_before: Some(timestamp(crm.created(6))),
            subscribed_only: true,
            ..Default::default()
        },
        &[2],
    )
    .await;
    // More tags than get a semi-join each (`ALL_OF_JOINS_MAX`): one grouping, same meaning.
    // Contact 2 has seven of the eight (not b).
    let mut many = vec![a, b];
    for n in 0..6 {
        let tag = crm.app.ws.tag(&crm.app.db, &format!("many {n}")).await;
        for contact in [1, 2, 3] {
            tag_contact(&crm.app.db, crm.ids[contact - 1], tag).await;
        }
        many.push(tag);
    }
    crm.expect(
        "all of eight tags",
        CreateExportRequest {
            tag_ids: ids(&many),
            tag_match: TagMatch::All.into(),
            ..Default::default()
        },
        &[1, 3],
    )
    .await;
    crm.expect(
        "a filter nobody passes",
        CreateExportRequest {
            tag_ids: ids(&[b, c]),
            tag_match: TagMatch::All.into(),
            subscribed_only: true,
            ..Default::default()
        },
        &[],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filter_that_cannot_be_met_is_refused_naming_its_field() {
    let crm = crm().await;
    let (a, c) = (crm.a, crm.c);
    let elsewhere = Workspace::create(&crm.app.db, crm.app.addr, false).await;
    let their_tag = elsewhere.tag(&crm.app.db, "theirs").await;
    let late = timestamp(crm.created(4));
    let early = timestamp(crm.created(2));

    for (what, request, message) in [
        (
            "all-of without tags",
            CreateExportRequest {
                tag_match: TagMatch::All.into(),
                ..Default::default()
            },
            "tag_match: TAG_MATCH_ALL needs tag_ids to match".to_owned(),
        ),
        (
            "an unknown match",
            CreateExportRequest {
                tag_match: 9,
                ..Default::default()
            },
            "tag_match: unknown value 9".to_owned(),
        ),
        (
            "an excluded tag that is not a UUID",
            CreateExportRequest {
                exclude_tag_ids: vec!["vip".into()],
                ..Default::default()
            },
            "exclude_tag_ids: \"vip\" is not a UUID".to_owned(),
        ),
        (
            "an excluded tag of another workspace",
            CreateExportRequest {
                exclude_tag_ids: ids(&[their_tag]),
                ..Default::default()
            },
            format!("exclude_tag_ids: no tag {their_tag} in this workspace"),
        ),
        (
            "a tag both wanted and excluded",
            CreateExportRequest {
                tag_ids: ids(&[a, c]),
                exclude_tag_ids: ids(&[c]),
                ..Default::default()
            },
            format!("exclude_tag_ids: {c} is also in tag_ids"),
        ),
        (
            "a range that ends before it starts",
            CreateExportRequest {
                created_after: Some(late),
                created_before: Some(early),
                ..Default::default()
            },
            "created_before: ".to_owned(),
        ),
        (
            "an empty range",
            CreateExportRequest {
                created_after: Some(early),
                created_before: Some(early),
                ..Default::default()
            },
            "created_before: ".to_owned(),
        ),
        (
            "an instant past what a timestamp holds",
            CreateExportRequest {
                created_after: Some(Timestamp {
                    seconds: 0,
                    nanos: 2_000_000_000,
                }),
                ..Default::default()
            },
            "created_after: ".to_owned(),
        ),
    ] {
        for validate_only in [true, false] {
            let status = crm
                .app
                .ws
                .client
                .create(CreateExportRequest {
                    validate_only,
                    ..request.clone()
                })
                .await
                .unwrap_err();
            assert_eq!(status.code(), Code::InvalidArgument, "{what}: {status:?}");
            assert!(status.message().starts_with(&message), "{what}: {status:?}");
        }
    }
    assert!(crm.app.ws.client.list_all().await.unwrap().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_id_is_bound_to_its_filter() {
    let crm = crm().await;
    let first = CreateExportRequest {
        request_id: "nightly-subscribers".into(),
        tag_ids: ids(&[crm.a]),
        subscribed_only: true,
        ..Default::default()
    };
    let made = run_export(&crm.app.ws.client, first.clone()).await;
    // The same request again is the same export.
    let again = crm.app.ws.client.create(first.clone()).await.unwrap();
    assert_eq!(again.id, made.id);

    let status = crm
        .app
        .ws
        .client
        .create(CreateExportRequest {
            tag_match: TagMatch::All.into(),
            exclude_tag_ids: ids(&[crm.c]),
            subscribed_only: false,
            ..first
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::FailedPrecondition);
    assert!(
        status.message().starts_with(
            "request_id \"nightly-subscribers\" was first used with other tag_match, \
             exclude_tag_ids, subscribed_only"
        ),
        "{status:?}"
    );
    assert_eq!(crm.app.ws.client.list_all().await.unwrap().len(), 1);
}
