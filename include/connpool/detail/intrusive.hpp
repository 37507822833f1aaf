#ifndef CONNPOOL_DETAIL_INTRUSIVE_HPP
#define CONNPOOL_DETAIL_INTRUSIVE_HPP

// Intrusive containers for the books: a doubly linked list and a binary heap whose elements carry
// their own links or position, so that insertion and removal of a known element never allocate
// (the list) or cost O(log n) (the heap), and membership is a field of the element.

#include <cstddef>
#include <utility>
#include <vector>

#include "connpool/detail/config.hpp"

namespace connpool {
CONNPOOL_ABI_BEGIN
namespace detail {

/// Two pointers, nothing else, so that a connection's hot fields fit one cache line.
template <class T>
struct list_hook {
  T* prev = nullptr;
  T* next = nullptr;
};

/// A FIFO/LRU list through the hook `H` of each element: front() is the oldest.
template <class T, list_hook<T> T::*H>
class ilist {
 public:
  ilist() = default;
  ilist(const ilist&) = delete;
  ilist& operator=(const ilist&) = delete;

  T* front() const noexcept { return head_; }
  T* back() const noexcept { return tail_; }
  bool empty() const noexcept { return head_ == nullptr; }
  std::size_t size() const noexcept { return size_; }
  static T* next(const T* x) noexcept { return (x->*H).next; }
  static T* prev(const T* x) noexcept { return (x->*H).prev; }
  /// Whether `x` is on this list (an element is on at most one list per hook).
  bool linked(const T* x) const noexcept { return (x->*H).prev != nullptr || head_ == x; }

  void push_back(T* x) noexcept {
    list_hook<T>& h = x->*H;
    h.prev = tail_;
    h.next = nullptr;
    (tail_ ? (tail_->*H).next : head_) = x;
    tail_ = x;
    ++size_;
  }

  /// Link `x` before `pos` (at the back if `pos` is null).
  void insert_before(T* pos, T* x) noexcept {
    if (!pos) return push_back(x);
    list_hook<T>& h = x->*H;
    h.next = pos;
    h.prev = (pos->*H).prev;
    (h.prev ? (h.prev->*H).next : head_) = x;
    (pos->*H).prev = x;
    ++size_;
  }

  void erase(T* x) noexcept {
    list_hook<T>& h = x->*H;
    (h.prev ? (h.prev->*H).next : head_) = h.next;
    (h.next ? (h.next->*H).prev : tail_) = h.prev;
    h.prev = h.next = nullptr;
    --size_;
  }

 private:
  T* head_ = nullptr;
  T* tail_ = nullptr;
  std::size_t size_ = 0;
};

inline constexpr std::size_t not_in_heap = static_cast<std::size_t>(-1);

/// A min-heap of pointers, ordered by `Less`, each element keeping its position in the field `P`
/// (not_in_heap when out): push, erase and fix of a known element are O(log n), top() O(1).
template <class T, std::size_t T::*P, class Less>
class iheap {
 public:
  bool empty() const noexcept { return v_.empty(); }
  std::size_t size() const noexcept { return v_.size(); }
  T* top() const noexcept { return v_.front(); }
  static bool contains(const T* x) noexcept { return x->*P != not_in_heap; }

  /// May throw std::bad_alloc (the vector grows); the heap is unchanged then.
  void push(T* x) {
    v_.push_back(x);
    x->*P = v_.size() - 1;
    up(v_.size() - 1);
  }

  void erase(T* x) noexcept {
    const std::size_t i = x->*P;
    x->*P = not_in_heap;
    T* last = v_.back();
    v_.pop_back();
    if (last == x) return;
    place(last, i);
    fix_at(i);
  }

  /// `x`'s key changed: restore the order.
  void fix(T* x) noexcept { fix_at(x->*P); }

  template <class F>
  void for_each(F f) const {
    for (T* x : v_) f(x);
  }

 private:
  void place(T* x, std::size_t i) noexcept {
    v_[i] = x;
    x->*P = i;
  }
  void fix_at(std::size_t i) noexcept {
    if (i > 0 && Less()(v_[i], v_[(i - 1) / 2]))
      up(i);
    else
      down(i);
  }
  void up(std::size_t i) noexcept {
    T* x = v_[i];
    while (i > 0) {
      const std::size_t p = (i - 1) / 2;
      if (!Less()(x, v_[p])) break;
      place(v_[p], i);
      i = p;
    }
    place(x, i);
  }
  void down(std::size_t i) noexcept {
    T* x = v_[i];
    const std::size_t n = v_.size();
    for (;;) {
      std::size_t c = 2 * i + 1;
      if (c >= n) break;
      if (c + 1 < n && Less()(v_[c + 1], v_[c])) ++c;
      if (!Less()(v_[c], x)) break;
      place(v_[c], i);
      i = c;
    }
    place(x, i);
  }

  std::vector<T*> v_;
};

}  // namespace detail
CONNPOOL_ABI_END
}  // namespace connpool

#endif
