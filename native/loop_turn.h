// Once per loop turn: a uv_check that runs a callback after the turn's I/O, started on
// request, with an idle handle so that a request made outside I/O (a timer) does not
// wait for the next poll. The N-API wraps (engine, tunnel link) deliver their batched
// events through it: one call into JavaScript per turn, whatever happened in it.
#ifndef SLUICE_LOOP_TURN_H_
#define SLUICE_LOOP_TURN_H_

#include <uv.h>

namespace sluice {

class LoopTurn {
 public:
  using Fn = void (*)(void* data);
  LoopTurn(uv_loop_t* loop, Fn fn, void* data) : fn_(fn), data_(data) {
    check_ = new uv_check_t;
    uv_check_init(loop, check_);
    check_->data = this;
    idle_ = new uv_idle_t;
    uv_idle_init(loop, idle_);
    uv_unref(reinterpret_cast<uv_handle_t*>(idle_));
  }
  // The handles live on the heap: libuv may call back after the owner is gone, and their
  // close callbacks free only them.
  ~LoopTurn() {
    uv_check_stop(check_);
    uv_close(reinterpret_cast<uv_handle_t*>(check_), [](uv_handle_t* h) { delete reinterpret_cast<uv_check_t*>(h); });
    uv_idle_stop(idle_);
    uv_close(reinterpret_cast<uv_handle_t*>(idle_), [](uv_handle_t* h) { delete reinterpret_cast<uv_idle_t*>(h); });
  }
  LoopTurn(const LoopTurn&) = delete;
  LoopTurn& operator=(const LoopTurn&) = delete;

  // The callback runs at the end of this turn (once, however often this is called).
  void Request() {
    if (active_) return;
    active_ = true;
    uv_check_start(check_, &LoopTurn::OnCheck);
    uv_idle_start(idle_, [](uv_idle_t*) {});
  }

 private:
  static void OnCheck(uv_check_t* h) {
    LoopTurn* t = static_cast<LoopTurn*>(h->data);
    t->active_ = false;
    uv_check_stop(t->check_);
    uv_idle_stop(t->idle_);
    t->fn_(t->data_);
  }

  Fn fn_;
  void* data_;
  uv_check_t* check_;
  uv_idle_t* idle_;
  bool active_ = false;
};

}  // namespace sluice

#endif  // SLUICE_LOOP_TURN_H_
