//! Kernel tests of lanes: routing to lanes, the fresh pool, lane calls and lane queries.

use super::*;

impl Harness {
    /// Sends an execute request with tags; reads its busy.
    async fn execute_tagged(&mut self, code: &str, tags: &[&str]) -> Message {
        let mut request = self.request("execute_request", json!({"code": code}));
        request.metadata.insert("tags".into(), json!(tags));
        self.send(Channel::Shell, &request).await;
        self.expect_status("busy", &request).await;
        request
    }

    /// Reads execute_input and the job, which must go to `lane`.
    /// An `execute_request` of `code` from client session `session` (not sent).
    fn execute_request_from(&self, session: &str, code: &str) -> Message {
        let mut request = self.request("execute_request", json!({"code": code}));
        request.header.session = session.to_owned();
        request
    }

    async fn started_on(&mut self, request: &Message, lane: Lane) -> crate::lanes::ExecuteJob {
        let input = self.next(Channel::Iopub).await;
        assert_eq!(input.msg_type(), "execute_input");
        assert_eq!(input.parent_header.unwrap().msg_id, request.header.msg_id);
        match self.call().await {
            Call::Run(got, Job::Execute(job)) => {
                assert_eq!(got, lane, "cell {:?} went to the wrong lane", job.code);
                job
            }
            other => panic!("expected an execute job, got {other:?}"),
        }
    }

    /// Finishes a job ok and reads its reply and idle (and any follow-up busy).
    async fn finish_ok(&mut self, job: &crate::lanes::ExecuteJob, request: &Message) {
        self.event(Event::Finished { request: job.request, reply: ok_reply(job.execution_count) });
        let reply = self.next(Channel::Shell).await;
        assert_eq!(reply.parent_header.unwrap().msg_id, request.header.msg_id);
        self.expect_status("idle", request).await;
    }

    async fn call_reply(&mut self) -> (Lane, u64, Result<Value, String>) {
        match self.call().await {
            Call::CallReply(lane, id, reply) => (lane, id, reply),
            other => panic!("expected a call reply, got {other:?}"),
        }
    }
}

#[tokio::test]
async fn cells_go_to_their_lanes_and_lanes_run_at_once() {
    let mut h = Harness::start().await;
    let a = h.execute("%%lane a\nx = 1").await;
    let job_a = h.started_on(&a, Lane::Named("a".into())).await;
    assert_eq!(job_a.code, "x = 1", "the magic line is removed");
    let b = h.execute_tagged("y = 2", &["lane:b"]).await;
    // Lane a's job has not finished, yet lane b's starts: lanes do not wait for each other.
    let job_b = h.started_on(&b, Lane::Named("b".into())).await;
    assert_eq!(job_b.code, "y = 2");
    assert_eq!((job_a.execution_count, job_b.execution_count), (1, 2));
    let main = h.execute("z = 3").await;
    let job_main = h.started_on(&main, Lane::Main).await;
    // A second cell of lane a waits for the first.
    let a2 = h.execute("%%lane a\nx += 1").await;
    assert!(h.calls.try_recv().is_err(), "lane a is still running its first cell");
    h.event(Event::Finished { request: job_a.request, reply: ok_reply(1) });
    h.next(Channel::Shell).await;
    h.expect_status("idle", &a).await;
    h.expect_status("busy", &b).await;
    let job_a2 = h.started_on(&a2, Lane::Named("a".into())).await;
    assert_eq!(job_a2.execution_count, 4);
    for (job, request) in [(&job_b, &b), (&job_main, &main)] {
        h.event(Event::Finished { request: job.request, reply: ok_reply(job.execution_count) });
        h.next(Channel::Shell).await;
        h.expect_status("idle", request).await;
        h.next(Channel::Iopub).await; // the follow-up busy of a request still running
    }
}

#[tokio::test]
async fn fresh_cells_share_the_pool_and_wait_for_a_free_lane() {
    let mut h = Harness::start().await;
    let first = h.execute("%%parallel\n1").await;
    let job1 = h.started_on(&first, Lane::Fresh(0)).await;
    let second = h.execute_tagged("2", &["parallel"]).await;
    let job2 = h.started_on(&second, Lane::Fresh(1)).await;
    let third = h.execute("%%lane --fresh\n3").await;
    assert!(h.calls.try_recv().is_err(), "both fresh lanes are busy: the third cell waits");
    h.finish_ok(&job2, &second).await;
    h.expect_status("busy", &first).await;
    let job3 = h.started_on(&third, Lane::Fresh(1)).await;
    assert_eq!(job3.code, "3");
    h.finish_ok(&job1, &first).await;
    h.expect_status("busy", &third).await;
    h.finish_ok(&job3, &third).await;
}

#[tokio::test]
async fn a_bad_lane_name_is_an_error_under_the_cell_and_nothing_runs() {
    let mut h = Harness::start().await;
    let bad = h.execute("%%lane no/slash\nx = 1").await;
    let error = h.next(Channel::Iopub).await;
    assert_eq!(error.msg_type(), "error");
    assert_eq!(error.content["ename"], "LaneError");
    assert!(error.content["evalue"].as_str().unwrap().contains("1-64 letters"));
    let reply = h.next(Channel::Shell).await;
    assert_eq!(reply.content["status"], "error");
    h.expect_status("idle", &bad).await;
    assert!(h.calls.try_recv().is_err(), "nothing ran");
}

#[tokio::test]
async fn stop_on_error_aborts_only_the_failing_lanes_queue() {
    let mut h = Harness::start().await;
    let a1 = h.execute("%%lane a\n1/0").await;
    let job_a1 = h.started_on(&a1, Lane::Named("a".into())).await;
    let a2 = h.execute("%%lane a\nnever").await;
    let b1 = h.execute("%%lane b\nfine").await;
    let job_b1 = h.started_on(&b1, Lane::Named("b".into())).await;
    h.event(Event::Finished {
        request: job_a1.request,
        reply: Some(crate::lanes::ExecuteReply::error(1, crate::lanes::ErrorContent::new("ZeroDivisionError", ""))),
    });
    assert_eq!(h.next(Channel::Shell).await.content["status"], "error");
    h.expect_status("idle", &a1).await;
    h.expect_status("busy", &a2).await;
    let aborted = h.next(Channel::Shell).await;
    assert_eq!(aborted.parent_header.as_ref().unwrap().msg_id, a2.header.msg_id);
    assert_eq!(aborted.content["status"], "aborted");
    h.expect_status("idle", &a2).await;
    h.expect_status("busy", &b1).await;
    h.finish_ok(&job_b1, &b1).await;
}

#[tokio::test]
async fn wait_is_answered_when_the_earlier_cells_of_other_lanes_are_done() {
    let mut h = Harness::start().await;
    let a = h.execute("%%lane a\nwork()").await;
    let job_a = h.started_on(&a, Lane::Named("a".into())).await;
    let summary = h.execute("%wait\nsummary()").await;
    let job_main = h.started_on(&summary, Lane::Main).await;
    // A cell requested after the %wait cell is not waited for.
    let later = h.execute("%%lane b\nlater()").await;
    let job_later = h.started_on(&later, Lane::Named("b".into())).await;
    h.event(Event::Call { lane: Lane::Main, id: 7, request: Some(job_main.request), call: LaneCall::Wait { lanes: vec![] } });
    h.event(Event::Finished { request: job_a.request, reply: ok_reply(1) });
    h.next(Channel::Shell).await;
    h.expect_status("idle", &a).await;
    let (lane, id, reply) = h.call_reply().await;
    assert_eq!((lane, id), (Lane::Main, 7));
    assert!(reply.is_ok());
    h.expect_status("busy", &summary).await;
    h.finish_ok(&job_main, &summary).await;
    h.expect_status("busy", &later).await;
    h.finish_ok(&job_later, &later).await;
}

#[tokio::test]
async fn wait_for_an_unknown_lane_says_which_lanes_exist() {
    let mut h = Harness::start().await;
    h.event(Event::Call { lane: Lane::Main, id: 1, request: None, call: LaneCall::Wait { lanes: vec!["nope".into()] } });
    let (_, _, reply) = h.call_reply().await;
    let message = reply.unwrap_err();
    assert!(message.contains("\"nope\"") && message.contains("main"), "{message}");
}

#[tokio::test]
async fn lanes_table_interrupt_restart_and_stop() {
    let mut h = Harness::start().await;
    let a = h.execute("%%lane a\nlong()").await;
    let job_a = h.started_on(&a, Lane::Named("a".into())).await;
    let queued = h.execute("%%lane a\nqueued()").await;

    h.event(Event::Call { lane: Lane::Main, id: 1, request: None, call: LaneCall::Lanes });
    let (_, _, table) = h.call_reply().await;
    let table = table.unwrap();
    let row = table.as_array().unwrap().iter().find(|row| row["name"] == "a").unwrap().clone();
    assert_eq!(row["state"], "running");
    assert_eq!(row["queued"], 1);
    assert_eq!(row["running"], "In [1]: long()");
    assert!(table.as_array().unwrap().iter().any(|row| row["name"] == "fresh-1" && row["kind"] == "fresh"));
    let main = table.as_array().unwrap().iter().find(|row| row["name"] == "main").unwrap();
    assert_eq!(main["cpu"], 0.5, "the executor's CPU seconds are in the row");
    assert!(row["cpu"].is_null(), "a lane without a meter has no CPU time");

    h.event(Event::Call { lane: Lane::Main, id: 2, request: None, call: LaneCall::Interrupt { lane: "a".into() } });
    assert!(matches!(h.call().await, Call::Interrupt(InterruptTarget::Lane(Lane::Named(name))) if name == "a"));
    assert!(h.call_reply().await.2.is_ok());

    h.event(Event::Call { lane: Lane::Main, id: 3, request: None, call: LaneCall::Restart { lane: "main".into() } });
    assert!(h.call_reply().await.2.unwrap_err().contains("Restart Kernel"));
    h.event(Event::Call { lane: Lane::Named("a".into()), id: 4, request: None, call: LaneCall::Stop { lane: "a".into() } });
    assert!(h.call_reply().await.2.unwrap_err().contains("cannot stop itself"));

    h.event(Event::Call { lane: Lane::Main, id: 5, request: None, call: LaneCall::Restart { lane: "a".into() } });
    // The queued cell is aborted, the lane is ended and made anew.
    let aborted = h.next(Channel::Shell).await;
    assert_eq!(aborted.content["status"], "aborted");
    h.expect_status("idle", &queued).await;
    h.expect_status("busy", &a).await;
    assert!(matches!(h.call().await, Call::EndLane(Lane::Named(name), true) if name == "a"));
    assert_eq!(h.call_reply().await.2.unwrap()["aborted"], 1);
    h.finish_ok(&job_a, &a).await;

    h.event(Event::Call { lane: Lane::Main, id: 6, request: None, call: LaneCall::Stop { lane: "a".into() } });
    assert!(matches!(h.call().await, Call::EndLane(Lane::Named(name), false) if name == "a"));
    assert!(h.call_reply().await.2.is_ok());
    h.event(Event::Call { lane: Lane::Main, id: 7, request: None, call: LaneCall::Lanes });
    let (_, _, table) = h.call_reply().await;
    assert!(!table.unwrap().as_array().unwrap().iter().any(|row| row["name"] == "a"), "a stopped lane is gone");
}

#[tokio::test]
async fn completion_in_a_lane_cell_asks_that_lane_and_positions_come_back_shifted() {
    let mut h = Harness::start().await;
    let a = h.execute("%%lane a\nvalue = 1").await;
    let job = h.started_on(&a, Lane::Named("a".into())).await;
    h.finish_ok(&job, &a).await;

    let code = "%%lane a\nval";
    let complete = h.request("complete_request", json!({"code": code, "cursor_pos": 12}));
    h.send(Channel::Shell, &complete).await;
    h.expect_status("busy", &complete).await;
    let Call::Query(id, Query::Complete { code, cursor_pos }) = h.call().await else { panic!("not a query") };
    assert_eq!((code.as_str(), cursor_pos), ("val", 3));
    h.event(Event::Answered {
        request: id,
        reply: Some(json!({"status": "ok", "matches": ["value"], "cursor_start": 0, "cursor_end": 3, "metadata": {}})),
    });
    let reply = h.next(Channel::Shell).await;
    assert_eq!((reply.content["cursor_start"].as_u64(), reply.content["cursor_end"].as_u64()), (Some(9), Some(12)));
}

#[tokio::test(start_paused = true)]
async fn a_lane_that_does_not_answer_a_query_gets_an_empty_answer_in_time() {
    let mut h = Harness::start().await;
    let complete = h.request("complete_request", json!({"code": "pri", "cursor_pos": 3}));
    h.send(Channel::Shell, &complete).await;
    h.expect_status("busy", &complete).await;
    let Call::Query(id, _) = h.call().await else { panic!("not a query") };
    // Nobody answers: on (virtual) time the kernel answers empty.
    let reply = h.next(Channel::Shell).await;
    assert_eq!(reply.content["matches"], json!([]));
    assert_eq!(reply.content["cursor_start"], 3);
    h.expect_status("idle", &complete).await;
    // A late answer is dropped, not sent twice.
    h.event(Event::Answered { request: id, reply: Some(json!({"status": "ok", "matches": ["print"]})) });
    let info = h.request("kernel_info_request", json!({}));
    h.send(Channel::Shell, &info).await;
    h.expect_status("busy", &info).await;
    assert_eq!(h.next(Channel::Shell).await.msg_type(), "kernel_info_reply");
}

#[tokio::test(start_paused = true)]
async fn an_idle_lane_is_waited_for_and_a_lane_that_cannot_answer_is_answered_at_once() {
    let mut h = Harness::start().await;
    let complete = h.request("complete_request", json!({"code": "pri", "cursor_pos": 3}));
    h.send(Channel::Shell, &complete).await;
    h.expect_status("busy", &complete).await;
    let Call::Query(id, _) = h.call().await else { panic!("not a query") };
    // The lane is idle: jedi may take far longer than a busy lane's bound under load.
    tokio::time::sleep(crate::kernel::QUERY_BOUND_BUSY * 20).await;
    h.event(Event::Answered { request: id, reply: Some(json!({"status": "ok", "matches": ["print"]})) });
    let reply = h.next(Channel::Shell).await;
    assert_eq!(reply.content["matches"], json!(["print"]), "an idle lane's answer is sent in full");
    h.expect_status("idle", &complete).await;

    let inspect = h.request("inspect_request", json!({"code": "print", "cursor_pos": 3}));
    h.send(Channel::Shell, &inspect).await;
    h.expect_status("busy", &inspect).await;
    let Call::Query(id, _) = h.call().await else { panic!("not a query") };
    let asked = tokio::time::Instant::now();
    h.event(Event::Answered { request: id, reply: None });
    let reply = h.next(Channel::Shell).await;
    assert_eq!(reply.content, json!({"status": "ok", "found": false, "data": {}, "metadata": {}}));
    assert_eq!(asked.elapsed(), std::time::Duration::ZERO, "answered without waiting for the deadline");
}

#[tokio::test]
async fn a_spawned_job_runs_on_a_fresh_lane_under_the_calling_cell_and_owes_no_reply() {
    let mut h = Harness::start().await;
    let caller = h.execute("parakernel.map(f, xs)").await;
    let job_caller = h.started_on(&caller, Lane::Main).await;
    let spawn = LaneCall::Spawn { code: "work()".into() };
    h.event(Event::Call { lane: Lane::Main, id: 3, request: Some(job_caller.request), call: spawn });
    // No execute_input, no busy: the job goes straight to a fresh lane, silent and unrecorded.
    let (lane, job) = match h.call().await {
        Call::Run(lane, Job::Execute(job)) => (lane, job),
        other => panic!("expected the spawned job, got {other:?}"),
    };
    assert!(matches!(lane, Lane::Fresh(_)), "{lane:?}");
    assert!(job.silent && !job.store_history && job.code == "work()");
    assert_eq!(job.parent_header["msg_id"], json!(caller.header.msg_id), "its output goes under the caller");
    let (_, id, reply) = h.call_reply().await;
    assert_eq!(id, 3);
    assert_eq!(reply.unwrap()["job"], json!(job.request));
    // Its output is parented to the calling cell.
    h.event(Event::Stream { request: Some(job.request), name: crate::lanes::StreamName::Stdout, text: "from a worker\n".into() });
    let stream = h.next(Channel::Iopub).await;
    assert_eq!(stream.parent_header.unwrap().msg_id, caller.header.msg_id);
    // A %wait from main does not wait for it, and its end sends nothing to any client.
    h.event(Event::Call { lane: Lane::Main, id: 4, request: Some(job_caller.request + 10), call: LaneCall::Wait { lanes: vec![] } });
    let (_, id, reply) = h.call_reply().await;
    assert!(id == 4 && reply.is_ok());
    h.event(Event::Finished { request: job.request, reply: ok_reply(job.execution_count) });
    h.finish_ok(&job_caller, &caller).await;
    // Spawning from no running cell is refused with a reason.
    h.event(Event::Call { lane: Lane::Main, id: 5, request: Some(job_caller.request), call: LaneCall::Spawn { code: "x".into() } });
    let (_, _, reply) = h.call_reply().await;
    assert!(reply.unwrap_err().contains("only while a cell runs"));
}

#[tokio::test]
async fn one_lane_per_session_runs_each_sessions_cells_in_its_own_lane() {
    let mut h = Harness::start_per_session().await;
    let a = h.execute_request_from("1a2b3c4d-0000-4000-8000-000000000000", "x = 1");
    h.send(Channel::Shell, &a).await;
    h.expect_status("busy", &a).await;
    let job_a = h.started_on(&a, Lane::Named("session-1a2b3c4d".into())).await;
    // Another session's cell runs beside it, in its lane; a name that is no uuid is kept.
    let b = h.execute_request_from("train-notebook", "x = 2");
    h.send(Channel::Shell, &b).await;
    h.expect_status("busy", &b).await;
    let job_b = h.started_on(&b, Lane::Named("train-notebook".into())).await;
    // `%%lane main` and tags still choose.
    let main = h.execute_request_from("train-notebook", "%%lane main\nshared = 1");
    h.send(Channel::Shell, &main).await;
    h.expect_status("busy", &main).await;
    let job_main = h.started_on(&main, Lane::Main).await;
    // %lanes says which session each lane serves.
    h.event(Event::Call { lane: Lane::Main, id: 1, request: Some(job_main.request), call: LaneCall::Lanes });
    let (_, _, table) = h.call_reply().await;
    let rows = table.unwrap();
    let session_of = |name: &str| rows.as_array().unwrap().iter().find(|row| row["name"] == name).map(|row| row["session"].clone());
    assert_eq!(session_of("train-notebook"), Some(json!("train-notebook")));
    assert_eq!(session_of("main"), Some(Value::Null));
    // An interrupt from a session reaches the lanes running its cells (its own lane, and main
    // for its `%%lane main` cell), not the other session's lane.
    let mut interrupt = h.request("interrupt_request", json!({}));
    interrupt.header.session = "train-notebook".into();
    h.send(Channel::Control, &interrupt).await;
    h.expect_status("busy", &interrupt).await;
    let mut interrupted = Vec::new();
    for _ in 0..2 {
        match h.call().await {
            Call::Interrupt(InterruptTarget::Lane(lane)) => interrupted.push(lane),
            other => panic!("expected an interrupt of a lane, got {other:?}"),
        }
    }
    interrupted.sort();
    let mut expected = vec![Lane::Main, Lane::Named("train-notebook".into())];
    expected.sort();
    assert_eq!(interrupted, expected);
    h.next(Channel::Control).await;
    h.expect_status("idle", &interrupt).await;
    h.expect_status("busy", &a).await;
    h.finish_ok(&job_a, &a).await;
    h.expect_status("busy", &b).await;
    h.finish_ok(&job_b, &b).await;
    h.expect_status("busy", &main).await;
    h.finish_ok(&job_main, &main).await;
}

#[tokio::test]
async fn one_lane_per_session_keeps_the_lanes_a_sessions_cells_name_apart() {
    let mut h = Harness::start_per_session().await;
    // Two notebooks name the same lane: each gets its own.
    let a = h.execute_request_from("nb1-train", "%%lane fit\nx = 1");
    h.send(Channel::Shell, &a).await;
    h.expect_status("busy", &a).await;
    let job_a = h.started_on(&a, Lane::Named("nb1-train/fit".into())).await;
    let b = h.execute_request_from("nb2-train", "%%lane fit\nx = 2");
    h.send(Channel::Shell, &b).await;
    h.expect_status("busy", &b).await;
    let job_b = h.started_on(&b, Lane::Named("nb2-train/fit".into())).await;
    // A tag names the session's lane too.
    let mut tagged = h.execute_request_from("nb1-train", "y = 1");
    tagged.metadata.insert("tags".into(), json!(["lane:prep"]));
    h.send(Channel::Shell, &tagged).await;
    h.expect_status("busy", &tagged).await;
    let job_tagged = h.started_on(&tagged, Lane::Named("nb1-train/prep".into())).await;
    // A session's `%wait fit` and `%lane interrupt fit` mean its own `fit`; a full name reaches
    // another session's lane.
    h.event(Event::Call { lane: Lane::Named("nb1-train/prep".into()), id: 1, request: Some(job_tagged.request), call: LaneCall::Interrupt { lane: "fit".into() } });
    assert!(matches!(h.call().await, Call::Interrupt(InterruptTarget::Lane(Lane::Named(name))) if name == "nb1-train/fit"));
    assert!(h.call_reply().await.2.is_ok());
    h.event(Event::Call { lane: Lane::Named("nb1-train/prep".into()), id: 2, request: Some(job_tagged.request), call: LaneCall::Interrupt { lane: "nb2-train/fit".into() } });
    assert!(matches!(h.call().await, Call::Interrupt(InterruptTarget::Lane(Lane::Named(name))) if name == "nb2-train/fit"));
    assert!(h.call_reply().await.2.is_ok());
    // An interrupt from nb2 reaches only the lane running nb2's cell.
    let mut interrupt = h.request("interrupt_request", json!({}));
    interrupt.header.session = "nb2-train".into();
    h.send(Channel::Control, &interrupt).await;
    h.expect_status("busy", &interrupt).await;
    assert!(matches!(h.call().await, Call::Interrupt(InterruptTarget::Lane(Lane::Named(name))) if name == "nb2-train/fit"));
    h.next(Channel::Control).await;
    h.expect_status("idle", &interrupt).await;
    h.expect_status("busy", &a).await;
    h.finish_ok(&job_a, &a).await;
    h.expect_status("busy", &b).await;
    h.finish_ok(&job_tagged, &tagged).await;
    h.expect_status("busy", &b).await;
    // Stopping a notebook's scope (it never ran a cell on a lane of its own) stops the lanes
    // its cells named, and no other notebook's.
    h.event(Event::Call { lane: Lane::Main, id: 3, request: None, call: LaneCall::Stop { lane: "nb1-train".into() } });
    let mut ended = Vec::new();
    for _ in 0..2 {
        match h.call().await {
            Call::EndLane(Lane::Named(name), false) => ended.push(name),
            other => panic!("expected a lane stopped, got {other:?}"),
        }
    }
    ended.sort();
    assert_eq!(ended, ["nb1-train/fit", "nb1-train/prep"]);
    let (_, _, stopped) = h.call_reply().await;
    assert_eq!(stopped.unwrap()["also"], json!(["nb1-train/fit", "nb1-train/prep"]));
    h.event(Event::Call { lane: Lane::Main, id: 4, request: None, call: LaneCall::Lanes });
    let (_, _, table) = h.call_reply().await;
    let names: Vec<String> = table.unwrap().as_array().unwrap().iter().map(|row| row["name"].as_str().unwrap().to_owned()).collect();
    assert!(names.contains(&"nb2-train/fit".to_owned()) && !names.iter().any(|name| name.starts_with("nb1-train")), "{names:?}");
    h.finish_ok(&job_b, &b).await;
}

#[tokio::test]
async fn one_lane_per_session_a_failed_cell_aborts_only_its_own_sessions_cells_on_a_shared_lane() {
    let mut h = Harness::start_per_session().await;
    let failing = h.execute_request_from("nb1", "%%lane main\n1/0");
    h.send(Channel::Shell, &failing).await;
    h.expect_status("busy", &failing).await;
    let job = h.started_on(&failing, Lane::Main).await;
    // Queued on the main lane behind it: another notebook's cell, then its own next cell.
    let other = h.execute_request_from("nb2", "%%lane main\nfine");
    h.send(Channel::Shell, &other).await;
    h.expect_status("busy", &other).await;
    let behind = h.execute_request_from("nb1", "%%lane main\nnever");
    h.send(Channel::Shell, &behind).await;
    h.expect_status("busy", &behind).await;
    h.event(Event::Finished { request: job.request, reply: Some(crate::lanes::ExecuteReply::error(1, crate::lanes::ErrorContent::new("ZeroDivisionError", ""))) });
    assert_eq!(h.next(Channel::Shell).await.content["status"], "error");
    h.expect_status("idle", &failing).await;
    h.expect_status("busy", &other).await;
    let aborted = h.next(Channel::Shell).await;
    assert_eq!(aborted.parent_header.as_ref().unwrap().msg_id, behind.header.msg_id);
    assert_eq!(aborted.content["status"], "aborted");
    h.expect_status("idle", &behind).await;
    h.expect_status("busy", &other).await;
    // The other notebook's cell runs.
    let job_other = h.started_on(&other, Lane::Main).await;
    h.finish_ok(&job_other, &other).await;
}
