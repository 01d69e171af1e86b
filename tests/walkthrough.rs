//! `examples/walkthrough.yaml` replayed stage by stage: two instances
//! registered in a target group by id, a scale-out whose new instance gets
//! no traffic, then the group attached and the new instance serving.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::util::*;

fn ids(stack: &Stack) -> BTreeSet<String> {
    stack.instances("web").iter().map(|it| it["id"].as_str().unwrap().to_string()).collect()
}

/// The instance ids answering `count` requests.
fn answering(url: &str, count: usize) -> BTreeSet<String> {
    (0..count).filter_map(|_| instance_of(url, &[])).collect()
}

#[test]
fn instances_registered_by_hand_then_the_group_attached() {
    let port = free_port();
    let stack = Stack::example("walkthrough.yaml", &[("port: 8091", &format!("port: {port}"))]);
    let url = format!("http://127.0.0.1:{port}/");
    stack.apply();
    let first_two = wait_for("two instances", Duration::from_secs(30), || Some(ids(&stack)).filter(|it| it.len() == 2));
    // Nothing is registered yet: the target group is empty.
    assert_eq!(curl(&url, &[]).unwrap().status, 503);

    // An unknown id is refused by plan, which lists the live ones.
    stack.edit("    # targets: [{ id: i-FIRST }, { id: i-SECOND }]", "    targets: [{ id: i-0123456789abcdef0 }]");
    let refused = stack.lbctl(&["plan"]).expect_code(1);
    assert!(
        refused.stderr.contains("`i-0123456789abcdef0` is not a live instance of this stack (live: "),
        "{}",
        refused.stderr
    );
    assert!(first_two.iter().all(|id| refused.stderr.contains(&format!("{id} (web)"))), "{}", refused.stderr);

    // Stage 1: the two instances registered by hand.
    let by_hand: Vec<String> = first_two.iter().map(|id| format!("{{ id: {id} }}")).collect();
    stack.edit("    targets: [{ id: i-0123456789abcdef0 }]", &format!("    targets: [{}]", by_hand.join(", ")));
    stack.apply();
    assert_eq!(answering(&url, 20), first_two, "both registered instances answer");

    // Stage 2: a scale-out; the new instance runs but is not a target.
    stack.edit("desired_capacity: 2", "desired_capacity: 3");
    stack.apply();
    let all = ids(&stack);
    assert_eq!(all.len(), 3);
    let third = all.difference(&first_two).next().unwrap().clone();
    assert_eq!(answering(&url, 30), first_two, "the third instance ({third}) gets no request");

    // Stage 3: the group attached; the third instance serves.
    stack.edit("    # target_groups: [web]", "    target_groups: [web]");
    stack.apply();
    wait_for("the third instance to serve", Duration::from_secs(30), || {
        answering(&url, 10).contains(&third).then_some(())
    });
    assert_eq!(answering(&url, 40), all, "every instance serves");
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);
}
