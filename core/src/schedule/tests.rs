use super::*;

fn section(toml_text: &str) -> ScheduleSection {
    toml::from_str(toml_text).expect("section parses")
}

fn parse(toml_text: &str) -> Result<Schedule, ScheduleError> {
    Schedule::parse(1, &section(toml_text))
}

const T0: u64 = 1_767_225_600_000; // 2026-01-01T00:00:00Z, a Thursday

#[test]
fn cron_with_seconds_fires_on_its_slots() {
    let s = parse("cron = \"0 */5 * * * *\"").unwrap();
    assert_eq!(s.next_after(T0), Some(T0 + 300_000));
    assert_eq!(s.next_after(T0 + 1), Some(T0 + 300_000));
    assert_eq!(s.latest_at_or_before(T0 + 299_999), Some(T0));
    assert_eq!(s.latest_at_or_before(T0), Some(T0));
    assert_eq!(s.slot_before_next(T0 + 600_000), Some(T0 + 300_000));
    assert_eq!(
        s.slots_between(T0, T0 + 1_200_000, 10),
        vec![T0 + 300_000, T0 + 600_000, T0 + 900_000]
    );
    assert_eq!(s.nats_pattern(), "0 */5 * * * *");
    assert_eq!(s.nats_time_zone(), None);
    assert_eq!(s.min_interval(), Duration::from_secs(300));
}

#[test]
fn a_time_zone_moves_the_slots() {
    let s = parse("cron = \"0 0 9 * * *\"\ntimezone = \"Europe/Berlin\"").unwrap();
    // 09:00 in Berlin in winter is 08:00 UTC.
    assert_eq!(s.next_after(T0), Some(T0 + 8 * 3_600_000));
    assert_eq!(s.nats_time_zone().as_deref(), Some("Europe/Berlin"));
}

#[test]
fn weekday_names_and_numbers_agree_with_nats() {
    // Sunday is 0, as in NATS (robfig/cron); 2026-01-04 is a Sunday.
    let by_number = parse("cron = \"0 0 0 * * 0\"").unwrap();
    let by_name = parse("cron = \"0 0 0 * * sun\"").unwrap();
    let sunday = T0 + 3 * 86_400_000;
    assert_eq!(by_number.next_after(T0), Some(sunday));
    assert_eq!(by_name.next_after(T0), Some(sunday));
    let nick = parse("cron = \"@daily\"").unwrap();
    assert_eq!(nick.nats_pattern(), "0 0 0 * * *");
    assert_eq!(nick.next_after(T0), Some(T0 + 86_400_000));
}

#[test]
fn every_keeps_to_its_grid() {
    let s = parse("every = \"30s\"").unwrap();
    assert_eq!(s.next_after(T0 + 1), Some(T0 + 30_000));
    assert_eq!(s.latest_at_or_before(T0 + 29_999), Some(T0));
    assert_eq!(s.slot_before_next(T0 + 31_000), Some(T0 + 1_000));
    assert_eq!(
        s.slots_between(T0 + 1_000, T0 + 62_000, 10),
        vec![T0 + 31_000, T0 + 61_000]
    );
    assert_eq!(s.nats_pattern(), "@every 30000ms");
    assert_eq!(s.min_interval(), Duration::from_secs(30));
}

#[test]
fn bad_schedules_name_the_field() {
    for (text, field, hint) in [
        ("cron = \"0 */5 * * *\"", "cron", "has 5 fields"),
        ("cron = \"0 0 0 L * *\"", "cron", "day of month"),
        ("cron = \"0 0 0 * * 7\"", "cron", "days 0–6"),
        ("cron = \"0 61 * * * *\"", "cron", "`0 61 * * * *`"),
        ("cron = \"0 0 0 31 2 *\"", "cron", "never fires"),
        (
            "cron = \"0 * * * * *\"\ntimezone = \"Mars/Olympus\"",
            "timezone",
            "unknown time zone `Mars/Olympus`",
        ),
        (
            "every = \"1s\"\ntimezone = \"UTC\"",
            "timezone",
            "`cron` only",
        ),
        ("every = \"0s\"", "every", "above zero"),
        ("cron = \"* * * * * *\"\nevery = \"1s\"", "cron", "not both"),
        ("catch_up = \"all\"", "cron", "give `cron"),
        (
            "every = \"1s\"\nmax_attempts = 0",
            "max_attempts",
            "at least 1",
        ),
    ] {
        let e = parse(text).unwrap_err();
        assert_eq!(e.field, field, "{text}: {e}");
        assert!(e.to_string().contains(hint), "{text}: {e}");
        assert!(e.to_string().starts_with("[[schedule]] #1 "), "{e}");
    }
}

#[test]
fn the_minimum_interval_is_held() {
    let fast = parse("every = \"500ms\"").unwrap();
    let e = fast.check_interval(2, DEFAULT_MIN_INTERVAL).unwrap_err();
    assert!(e.to_string().contains("minimum of 1s"), "{e}");
    assert!(e.to_string().starts_with("[[schedule]] #2 every"), "{e}");
    let each_second = parse("cron = \"* * * * * *\"").unwrap();
    each_second.check_interval(1, DEFAULT_MIN_INTERVAL).unwrap();
    let e = each_second
        .check_interval(1, Duration::from_secs(5))
        .unwrap_err();
    assert!(e.to_string().contains("fires every 1s"), "{e}");
}

#[test]
fn catch_up_policies_decide_late_fires() {
    let every = |policy: &str| parse(&format!("every = \"2s\"\ncatch_up = \"{policy}\"")).unwrap();
    let run = |make_up: Vec<u64>, dropped: u64| Admission {
        run: true,
        make_up,
        dropped,
    };
    let last = T0;
    // On time: every policy runs it, and nothing was missed.
    for p in ["latest", "none", "all"] {
        assert_eq!(
            admit(&every(p), T0 + 2_000, T0 + 2_100, Some(last)),
            run(vec![], 0)
        );
    }
    // The node was down for 10 s; its timer fires the last missed slot late.
    let (slot, fired) = (T0 + 10_000, T0 + 11_500);
    assert_eq!(
        admit(&every("latest"), slot, fired, Some(last)),
        run(vec![], 4)
    );
    assert_eq!(
        admit(&every("none"), slot, fired, Some(last)),
        Admission {
            run: false,
            make_up: vec![],
            dropped: 5
        }
    );
    // `none` runs a slot that came on time after the outage; the ones before it are gone.
    assert_eq!(
        admit(&every("none"), slot, slot + 300, Some(last)),
        run(vec![], 4)
    );
    assert_eq!(
        admit(&every("all"), slot, fired, Some(last)),
        run(vec![T0 + 2_000, T0 + 4_000, T0 + 6_000, T0 + 8_000], 0)
    );
    // `all` reaches back only `window`.
    let windowed = parse("every = \"2s\"\ncatch_up = \"all\"\nwindow = \"5s\"").unwrap();
    assert_eq!(
        admit(&windowed, slot, fired, Some(last)),
        run(vec![T0 + 8_000], 3)
    );
    assert_eq!(
        admit(&windowed, T0, fired, None),
        Admission {
            run: false,
            make_up: vec![],
            dropped: 1
        }
    );
    // A first fire has nothing before it.
    assert_eq!(admit(&every("all"), slot, fired, None), run(vec![], 0));
}

#[test]
fn what_nats_holds_gives_the_same_slots() {
    for text in [
        "cron = \"0 0 9 * * mon-fri\"\ntimezone = \"America/New_York\"",
        "every = \"90s\"",
    ] {
        let s = parse(text).unwrap();
        let back = Schedule::from_nats(&s.nats_pattern(), s.nats_time_zone().as_deref()).unwrap();
        let mut at = T0;
        for _ in 0..5 {
            assert_eq!(s.next_after(at), back.next_after(at), "{text}");
            at = s.next_after(at).unwrap();
        }
    }
    assert_eq!(parse_rfc3339("2026-01-01T00:00:01.5Z"), Some(T0 + 1_500));
    assert_eq!(parse_rfc3339("2026-01-01T01:00:00+01:00"), Some(T0));
    assert_eq!(rfc3339(T0 + 1_500), "2026-01-01T00:00:01.500Z");
}
