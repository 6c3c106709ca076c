//! `storage::Gcs` against a real fake-gcs-server: uploads small and resumable, names that need
//! encoding, listing across pages, deletes, and the errors a missing bucket gives.

use std::collections::BTreeSet;

use cos_customizer_gce::auth::Auth;
use cos_customizer_gce::storage::Gcs;
use cos_customizer_testkit::fake_gcs::{self, FakeGcs};

const BUCKET: &str = "gcs-test";

async fn setup() -> Option<(FakeGcs, Gcs)> {
    if !fake_gcs::require() {
        return None;
    }
    let fake = FakeGcs::start(BUCKET)
        .await
        .expect("fake-gcs-server starts");
    let gcs = Gcs::new(&fake.endpoint(), Auth::None).unwrap();
    Some((fake, gcs))
}

/// `len` bytes that differ from chunk to chunk, so a chunk sent twice or out of place shows.
fn pattern(len: usize) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect()
}

#[tokio::test]
async fn small_and_empty_uploads_arrive_intact_under_names_that_need_encoding() {
    let Some((fake, gcs)) = setup().await else {
        return;
    };
    let names = ["w/a b+c#d?é.txt", "w/plain", "w/empty"];
    gcs.upload_bytes(BUCKET, names[0], b"hello".to_vec())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain");
    std::fs::write(&file, pattern(5000)).unwrap();
    gcs.upload_file(BUCKET, names[1], &file).await.unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, b"").unwrap();
    gcs.upload_file(BUCKET, names[2], &empty).await.unwrap();

    assert_eq!(
        fake.object(BUCKET, names[0]).as_deref(),
        Some(&b"hello"[..])
    );
    assert_eq!(fake.object(BUCKET, names[1]), Some(pattern(5000)));
    assert_eq!(fake.object(BUCKET, names[2]), Some(Vec::new()));
    let mut listed = gcs.list(BUCKET, "w/").await.unwrap();
    listed.sort();
    let mut want: Vec<String> = names.iter().map(|n| n.to_string()).collect();
    want.sort();
    assert_eq!(listed, want);
}

#[tokio::test]
async fn a_large_file_goes_up_resumable_and_intact() {
    let Some((fake, gcs)) = setup().await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    // 40 MiB + 1: five full 8 MiB chunks and a one-byte tail.
    let data = pattern((40 << 20) + 1);
    let file = dir.path().join("cidata.tar.gz");
    std::fs::write(&file, &data).unwrap();
    gcs.upload_file(BUCKET, "w/cos-customizer/b1/cidata.tar.gz", &file)
        .await
        .unwrap();
    let stored = fake
        .object(BUCKET, "w/cos-customizer/b1/cidata.tar.gz")
        .unwrap();
    assert!(stored == data, "the stored object differs from the file");

    // The same size from memory takes the same path.
    gcs.upload_bytes(BUCKET, "w/bytes", data.clone())
        .await
        .unwrap();
    assert!(fake.object(BUCKET, "w/bytes").unwrap() == data);
}

#[tokio::test]
async fn listing_pages_through_more_than_a_thousand_objects_under_the_prefix_only() {
    let Some((fake, gcs)) = setup().await else {
        return;
    };
    let mut tasks = tokio::task::JoinSet::new();
    for batch in 0..8 {
        let gcs = gcs.clone();
        tasks.spawn(async move {
            for i in (batch..1005).step_by(8) {
                gcs.upload_bytes(BUCKET, &format!("w/cos-customizer/o{i:04}"), vec![1])
                    .await
                    .unwrap();
            }
        });
    }
    tasks.join_all().await;
    gcs.upload_bytes(BUCKET, "w/other", vec![2]).await.unwrap();
    gcs.upload_bytes(BUCKET, "w/cos-customizerX", vec![3])
        .await
        .unwrap();

    let listed = gcs.list(BUCKET, "w/cos-customizer/").await.unwrap();
    assert_eq!(listed.len(), 1005, "a page was lost or repeated");
    let unique: BTreeSet<_> = listed.iter().collect();
    assert_eq!(unique.len(), 1005);
    assert!(listed.iter().all(|n| n.starts_with("w/cos-customizer/o")));
    assert_eq!(gcs.list(BUCKET, "").await.unwrap().len(), 1007);

    assert_eq!(
        gcs.delete_prefix(BUCKET, "w/cos-customizer/")
            .await
            .unwrap(),
        1005
    );
    assert_eq!(fake.objects(BUCKET), ["w/cos-customizerX", "w/other"]);
    assert_eq!(
        gcs.delete_prefix(BUCKET, "w/cos-customizer/")
            .await
            .unwrap(),
        0
    );
}

#[tokio::test]
async fn deleting_twice_is_fine() {
    let Some((fake, gcs)) = setup().await else {
        return;
    };
    gcs.upload_bytes(BUCKET, "w/x y", b"1".to_vec())
        .await
        .unwrap();
    gcs.delete(BUCKET, "w/x y").await.unwrap();
    assert_eq!(fake.object(BUCKET, "w/x y"), None);
    gcs.delete(BUCKET, "w/x y").await.unwrap();
    gcs.delete("no-such-bucket", "w/x").await.unwrap();
}

#[tokio::test]
async fn a_missing_bucket_is_named_with_the_flag_to_fix() {
    let Some((_fake, gcs)) = setup().await else {
        return;
    };
    let err = gcs
        .upload_bytes("no-such-bucket", "w/o", b"x".to_vec())
        .await
        .unwrap_err();
    let text = format!("{err:#}");
    assert!(text.contains("gs://no-such-bucket/w/o"), "{text}");
    assert!(text.contains("-gcs-bucket"), "{text}");

    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("big");
    std::fs::write(&file, pattern((8 << 20) + 1)).unwrap();
    let text = format!(
        "{:#}",
        gcs.upload_file("no-such-bucket", "w/big", &file)
            .await
            .unwrap_err()
    );
    assert!(text.contains("gs://no-such-bucket/w/big"), "{text}");
    assert!(text.contains("-gcs-bucket"), "{text}");

    let text = format!("{:#}", gcs.list("no-such-bucket", "w/").await.unwrap_err());
    assert!(text.contains("gs://no-such-bucket/w/*"), "{text}");
    assert!(text.contains("-gcs-bucket"), "{text}");
}

#[tokio::test]
async fn a_missing_file_is_named() {
    let Some((_fake, gcs)) = setup().await else {
        return;
    };
    let err = gcs
        .upload_file(
            BUCKET,
            "w/o",
            std::path::Path::new("/nonexistent/cidata.tar.gz"),
        )
        .await
        .unwrap_err();
    assert!(
        format!("{err:#}").contains("/nonexistent/cidata.tar.gz"),
        "{err:#}"
    );
}

#[tokio::test]
async fn folders_are_listed_once_each_across_pages_without_their_objects() {
    let Some((_fake, gcs)) = setup().await else {
        return;
    };
    for name in ["t/a/1", "t/a/2", "t/b c/1", "t/b c/d/2", "t/plain", "u/z/1"] {
        gcs.upload_bytes(BUCKET, name, vec![1]).await.unwrap();
    }
    // More objects directly under the prefix than one page holds: fake-gcs-server pages
    // them, repeating every folder on each page.
    let mut tasks = tokio::task::JoinSet::new();
    for batch in 0..8 {
        let gcs = gcs.clone();
        tasks.spawn(async move {
            for i in (batch..1001).step_by(8) {
                gcs.upload_bytes(BUCKET, &format!("t/o{i:04}"), vec![1])
                    .await
                    .unwrap();
            }
        });
    }
    tasks.join_all().await;
    assert_eq!(
        gcs.list_folders(BUCKET, "t/").await.unwrap(),
        ["t/a/", "t/b c/"]
    );
    assert_eq!(gcs.list_folders(BUCKET, "").await.unwrap(), ["t/", "u/"]);
    let text = format!(
        "{:#}",
        gcs.list_folders("no-such-bucket", "t/").await.unwrap_err()
    );
    assert!(text.contains("gs://no-such-bucket/t/"), "{text}");
}

#[tokio::test]
async fn downloads_return_the_object_and_name_a_missing_one() {
    let Some((fake, gcs)) = setup().await else {
        return;
    };
    let data = pattern(70_000);
    fake.put(BUCKET, "d/a b+c.json", &data);
    fake.put(BUCKET, "d/empty", b"");
    assert!(gcs.download(BUCKET, "d/a b+c.json").await.unwrap() == data);
    assert_eq!(
        gcs.download(BUCKET, "d/empty").await.unwrap(),
        Vec::<u8>::new()
    );
    for (bucket, object) in [(BUCKET, "d/missing"), ("no-such-bucket", "d/x")] {
        let text = format!("{:#}", gcs.download(bucket, object).await.unwrap_err());
        assert!(text.contains(&format!("gs://{bucket}/{object}")), "{text}");
        assert!(text.contains("404"), "{text}");
    }
}
