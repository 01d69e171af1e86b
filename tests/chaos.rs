//! Chaos: for about 30 s, under keep-alive load through an application load
//! balancer to an `ELB` auto-scaling group, random `kill -9` of instances,
//! of the supervisor and of a running `lbctl apply`. Afterwards one apply
//! converges, plan has nothing to do, no request failed, and destroy leaves
//! no process behind. The seed is printed, so a failing run can be replayed
//! (`LBCTL_CHAOS_SEED`).

use std::process::Stdio;
use std::time::{Duration, Instant};

use crate::util::*;

/// How long the kills go on.
const CHAOS: Duration = Duration::from_secs(30);

/// A small xorshift generator: the kills are random, and replayable.
struct Dice(u64);

impl Dice {
    fn new() -> (Dice, u64) {
        let seed = std::env::var("LBCTL_CHAOS_SEED").ok().and_then(|it| it.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
        });
        (Dice(seed), seed)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// The instances the supervisor lists whose processes are alive and which
/// the load balancer finds healthy, as (id, pid).
fn serving(stack: &Stack) -> Vec<(String, u32)> {
    let run = stack.dir.path().join(".lbctl/run");
    let read = |path: &str| -> serde_json::Value {
        serde_json::from_str(&std::fs::read_to_string(run.join(path)).unwrap_or_default()).unwrap_or_default()
    };
    let (instances, status) = (read("asg/web/instances.json"), read("lb/front/status.json"));
    let healthy: Vec<&str> = status["target_groups"]["web"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|it| it["state"] == "healthy")
        .filter_map(|it| it["id"].as_str())
        .collect();
    instances["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|it| Some((it["id"].as_str()?.to_string(), it["pid"].as_u64()? as u32)))
        .filter(|(id, pid)| alive(*pid) && healthy.contains(&id.as_str()))
        .collect()
}

/// Runs `lbctl apply` and kills it (SIGKILL) after `after` unless it
/// finished first; 1 when it was killed.
fn apply_killed_within(stack: &Stack, after: Duration) -> u32 {
    let mut apply =
        stack.command(&["apply", "--auto-approve"]).stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let kill_at = Instant::now() + after;
    while Instant::now() < kill_at && apply.try_wait().unwrap().is_none() {
        std::thread::sleep(Duration::from_millis(10));
    }
    let killed = apply.try_wait().unwrap().is_none();
    if killed {
        kill9(apply.id());
    }
    apply.wait().unwrap();
    u32::from(killed)
}

fn supervisor_pid(stack: &Stack) -> Option<u32> {
    std::fs::read_to_string(stack.dir.path().join(".lbctl/run/asg/web/pid")).ok()?.trim().parse().ok()
}

#[test]
fn random_kills_fail_no_request_and_one_apply_converges() {
    let port = free_port();
    let group = "    min_size: 3
    max_size: 3
    health_check_type: ELB
    health_check_grace_period: 2s
    target_groups: [web]
    launch_template: { command: [lbctl, worker] }
";
    let stack = Stack::new(&web_group_spec("chaos", port, "1s", group));
    stack.apply();
    let (mut dice, seed) = Dice::new();
    println!("chaos seed {seed} (replay with LBCTL_CHAOS_SEED={seed})");
    let load = LoadLoop::start(port, "chaos", &["/", "/a", "/b"], CHAOS * 4);
    load.wait_for_more("the load to start", 20);

    let (mut instance_kills, mut supervisor_kills, mut apply_kills, mut applies) = (0, 0, 0, 0);
    let began = Instant::now();
    while began.elapsed() < CHAOS {
        match dice.below(3) {
            // An instance, as long as another keeps serving.
            0 => {
                let live = serving(&stack);
                if live.len() >= 2 {
                    let (_, pid) = &live[dice.below(live.len() as u64) as usize];
                    kill9(*pid);
                    instance_kills += 1;
                }
            }
            // The supervisor (its instances keep serving without it), then
            // an apply that repairs it, killed at a random moment unless it
            // finished first.
            1 => {
                if let Some(pid) = supervisor_pid(&stack).filter(|it| alive(*it)) {
                    kill9(pid);
                    supervisor_kills += 1;
                    wait_for("the supervisor to be gone", Duration::from_secs(10), || (!alive(pid)).then_some(()));
                }
                apply_kills += apply_killed_within(&stack, Duration::from_millis(dice.below(400)));
                applies += 1;
            }
            // An apply with nothing or little to do, killed at a random moment.
            _ => {
                apply_kills += apply_killed_within(&stack, Duration::from_millis(dice.below(30)));
                applies += 1;
            }
        }
        // The chaos's own pace, not a wait for a condition.
        std::thread::sleep(Duration::from_millis(300 + dice.below(1200)));
    }

    // One apply converges; then there is nothing to do.
    let converged = stack.apply();
    assert!(converged.stdout.contains("Apply complete!"), "{}", converged.stdout);
    stack.lbctl(&["plan", "--detailed-exitcode"]).expect_code(0);
    wait_for("three instances serving", Duration::from_secs(60), || (serving(&stack).len() == 3).then_some(()));
    load.wait_for_more("requests after the chaos", 50);
    let tally = load.finish();
    println!(
        "chaos (seed {seed}): {instance_kills} instances, {supervisor_kills} supervisors and {apply_kills} of {applies} applies killed; {} requests succeeded, {} failed",
        tally.ok(),
        tally.failed()
    );
    assert_eq!(tally.failed(), 0, "failures: {:?}", tally.failures.lock().unwrap());

    // Destroy leaves nothing of the stack running.
    let pids = stack.pids();
    stack.lbctl(&["destroy", "--auto-approve"]).expect_code(0);
    wait_for("every process of the stack to be gone", Duration::from_secs(30), || {
        pids.iter().all(|it| !alive(*it)).then_some(())
    });
    let dir = stack.dir.path().to_string_lossy().into_owned();
    let left = processes_where(|cmdline, cwd| cmdline.contains(&dir) || cwd.starts_with(stack.dir.path()));
    assert!(left.is_empty(), "processes of the stack left after destroy: {left:?}");
}
