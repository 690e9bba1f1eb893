use super::*;

/// istio-iptables' REDIRECT-mode table with the injector's defaults.
const DEFAULT_RULES: &str = "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15021 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15020 -j RETURN
-A ISTIO_INBOUND -p tcp -j ISTIO_IN_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -j ISTIO_REDIRECT
COMMIT
";

fn flags(args: &[&str]) -> IptablesArgs {
    #[derive(Debug, clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: IptablesArgs,
    }
    use clap::Parser;
    Cli::try_parse_from(std::iter::once("iptables").chain(args.iter().copied()))
        .unwrap_or_else(|e| panic!("{e}"))
        .args
}

#[test]
fn the_defaults_are_istio_inits() {
    assert_eq!(nat_rules(&CaptureConfig::default()), DEFAULT_RULES);
    let parsed = flags(&[]).config().unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(parsed, CaptureConfig::default());
}

#[test]
fn annotations_narrow_and_widen_the_capture() {
    let config = flags(&[
        "--include-outbound-ip-ranges",
        "10.96.0.0/12, 192.168.1.1",
        "--exclude-outbound-ip-ranges",
        "10.96.0.10/32,fd00::/8",
        "--include-inbound-ports",
        "9080,8080",
        "--exclude-inbound-ports",
        "15090,15008",
        "--exclude-outbound-ports",
        "5432",
    ])
    .config()
    .unwrap_or_else(|e| panic!("{e}"));
    let rules = nat_rules(&config);
    let expected = "*nat
:ISTIO_INBOUND - [0:0]
:ISTIO_REDIRECT - [0:0]
:ISTIO_IN_REDIRECT - [0:0]
:ISTIO_OUTPUT - [0:0]
-A ISTIO_INBOUND -p tcp --dport 15008 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 15090 -j RETURN
-A ISTIO_INBOUND -p tcp --dport 9080 -j ISTIO_IN_REDIRECT
-A ISTIO_INBOUND -p tcp --dport 8080 -j ISTIO_IN_REDIRECT
-A ISTIO_REDIRECT -p tcp -j REDIRECT --to-ports 15001
-A ISTIO_IN_REDIRECT -p tcp -j REDIRECT --to-ports 15006
-A PREROUTING -p tcp -j ISTIO_INBOUND
-A OUTPUT -p tcp -j ISTIO_OUTPUT
-A ISTIO_OUTPUT -p tcp --dport 5432 -j RETURN
-A ISTIO_OUTPUT -s 127.0.0.6/32 -o lo -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner --uid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --uid-owner 1337 -j RETURN
-A ISTIO_OUTPUT ! -d 127.0.0.1/32 -o lo -p tcp ! --dport 15008 -m owner --gid-owner 1337 -j ISTIO_IN_REDIRECT
-A ISTIO_OUTPUT -o lo -m owner ! --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -m owner --gid-owner 1337 -j RETURN
-A ISTIO_OUTPUT -d 127.0.0.1/32 -j RETURN
-A ISTIO_OUTPUT -d 10.96.0.10/32 -j RETURN
-A ISTIO_OUTPUT -d 10.96.0.0/12 -j ISTIO_REDIRECT
-A ISTIO_OUTPUT -d 192.168.1.1/32 -j ISTIO_REDIRECT
COMMIT
";
    assert_eq!(rules, expected);
}

#[test]
fn empty_include_lists_turn_capture_off() {
    let config = flags(&[
        "--include-outbound-ip-ranges",
        "",
        "--include-inbound-ports",
        "",
    ])
    .config()
    .unwrap_or_else(|e| panic!("{e}"));
    let rules = nat_rules(&config);
    assert!(!rules.contains("-j ISTIO_INBOUND"), "{rules}");
    assert!(!rules.contains("-A ISTIO_INBOUND"), "{rules}");
    assert!(!rules.contains("-j ISTIO_IN_REDIRECT"), "{rules}");
    assert!(
        !rules.contains("-A ISTIO_OUTPUT -j ISTIO_REDIRECT"),
        "{rules}"
    );
    assert!(!rules.contains("-d 10."), "{rules}");
    // The chains still exist, so a later run of the same rules finds what it expects.
    assert!(
        rules.contains("-A OUTPUT -p tcp -j ISTIO_OUTPUT"),
        "{rules}"
    );
}

#[test]
fn malformed_lists_are_refused() {
    assert_eq!(parse_ports("80,x"), Err(ListError::Port("x".into())));
    assert_eq!(parse_ports("0"), Err(ListError::Port("0".into())));
    assert_eq!(parse_ports("70000"), Err(ListError::Port("70000".into())));
    assert_eq!(
        parse_ranges("10.0.0.0/33x"),
        Err(ListError::Range("10.0.0.0/33x".into()))
    );
    assert_eq!(
        parse_ranges("example.com"),
        Err(ListError::Range("example.com".into()))
    );
    assert_eq!(parse_ports_or_all(" * "), Ok(None));
    assert_eq!(parse_ranges_or_all(""), Ok(Some(vec![])));
    assert!(flags(&["--exclude-inbound-ports", "abc"]).config().is_err());
}
