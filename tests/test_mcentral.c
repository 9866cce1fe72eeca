/* The mcentral: batches out of spans of one class, objects back into their
 * spans, and empty spans back to the heap. */
#include "test_helpers.h"
#include "internal.h"

static struct sa_heap_counters heap_now(void)
{
    struct sa_heap_counters h;
    sa_mheap_read(&h);
    return h;
}

static unsigned list_length(void *head, unsigned cls)
{
    unsigned n = 0;
    for (void *b = head; b != NULL; b = sa_decode_link(((uintptr_t *)b)[0])) {
        struct sa_span *s = sa_pagemap_lookup((uintptr_t)b);
        assert_non_null(s);
        assert_int_equal(sa_span_cls(s), cls);
        assert_true(sa_block_is_free(b));
        assert_int_equal(((uintptr_t)b - s->base) % s->elem_size, 0);
        n++;
    }
    return n;
}

static void fill_hands_out_free_blocks_of_the_class(void **state)
{
    (void)state;
    const unsigned cls = 7; /* 112 B, 73 per span */
    void *head;
    assert_int_equal(sa_mcentral_fill(cls, 200, &head), 200);
    assert_int_equal(list_length(head, cls), 200);
    sa_mcentral_release(cls, head);
}

/* A span whose last object comes back goes back to the heap at once. */
static void empty_spans_return_to_the_heap(void **state)
{
    (void)state;
    const unsigned cls = 40; /* 2560 B, 3 per page */
    struct sa_heap_counters before = heap_now();
    void *head;
    assert_int_equal(sa_mcentral_fill(cls, 30, &head), 30);
    assert_int_equal(heap_now().inuse_pages, before.inuse_pages + 10 * sa_class_npages[cls]);
    sa_mcentral_release(cls, head);
    assert_int_equal(heap_now().inuse_pages, before.inuse_pages);
}

/* Objects that come back are handed out again before fresh spans are cut. */
static void partial_spans_are_reused(void **state)
{
    (void)state;
    const unsigned cls = 12; /* 192 B */
    void *a, *b;
    assert_int_equal(sa_mcentral_fill(cls, 42, &a), 42); /* one whole span */
    assert_int_equal(sa_mcentral_fill(cls, 1, &b), 1);   /* keeps a second span in use */
    struct sa_span *first_span = sa_pagemap_lookup((uintptr_t)a);
    void *one = a;
    void *rest = sa_decode_link(((uintptr_t *)one)[0]);
    sa_block_make_free(one, NULL);
    sa_mcentral_release(cls, one); /* first span: 41 out, 1 free */
    struct sa_heap_counters before = heap_now();
    void *again;
    assert_int_equal(sa_mcentral_fill(cls, 1, &again), 1);
    assert_int_equal(heap_now().inuse_pages, before.inuse_pages);
    assert_ptr_equal(sa_pagemap_lookup((uintptr_t)again), first_span);
    sa_mcentral_release(cls, again);
    sa_mcentral_release(cls, rest);
    sa_mcentral_release(cls, b);
}

/* A batch flushed by one cache goes whole to the next refill: the same
 * blocks, and their span is not touched on the way. */
static void flushed_batches_pass_through_the_transfer_slots(void **state)
{
    (void)state;
    const unsigned cls = 20; /* 384 B */
    void *head;
    assert_int_equal(sa_mcentral_fill(cls, 10, &head), 10);
    struct sa_span *s = sa_pagemap_lookup((uintptr_t)head);
    uint32_t out_before = s->nalloc;
    sa_mcentral_release_batch(cls, head, 10);
    assert_int_equal(s->nalloc, out_before); /* still out of the span */
    void *again;
    assert_int_equal(sa_mcentral_fill(cls, 10, &again), 10);
    assert_ptr_equal(again, head);
    assert_int_equal(list_length(again, cls), 10);
    /* Drained, the blocks go back into their spans. */
    sa_mcentral_release_batch(cls, again, 10);
    struct sa_heap_counters before = heap_now();
    sa_mcentral_drain_transfer();
    assert_true(heap_now().inuse_pages < before.inuse_pages);
}

int main(void)
{
    sa_options.scavenger_enabled = false;
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(fill_hands_out_free_blocks_of_the_class),
        cmocka_unit_test(empty_spans_return_to_the_heap),
        cmocka_unit_test(partial_spans_are_reused),
        cmocka_unit_test(flushed_batches_pass_through_the_transfer_slots),
    };
    return cmocka_run_group_tests_name("mcentral", tests, NULL, NULL);
}
