;; Two extra core instances with a one-page memory each: three memories in
;; one component, one more than a component may have.
(core module $page (memory 1))
(core instance (instantiate $page))
(core instance (instantiate $page))
